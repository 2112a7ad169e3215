"""The root of mammoxai's typed errors.

The CLI prints a :class:`MammoxaiError` as one line (no traceback unless
``--debug``) and exits non-zero. Every layer's errors derive from it.
"""


class MammoxaiError(Exception):
    """An expected failure with a message fit for an operator: it names the file/key/UID and the problem."""
