"""The numbering of mammoxai's output series (no UIDs here: those come from :mod:`.identity`).

Every output goes into the *source* study, in series of its own. Series
Numbers are ``output.series_number_base + offset``: the per-kind offsets in
:data:`SERIES_OFFSETS`; the SC overlays get one series per explanation method
(and breast), numbered ``base + METHOD_SERIES_OFFSET + slot`` with ``slot`` the
method's own series slot (its record on the explainer class); a method without
a record gets ``base + UNRECORDED_METHOD_OFFSET``. Every number from the base up
to ``base + SERIES_SPAN - 1`` is reserved for mammoxai (loop prevention:
:func:`in_our_range`).
"""

from __future__ import annotations

#: Offset of each non-overlay kind's Series Number from ``output.series_number_base``.
#: (6 was the never-written Parametric Map; left unused. 8: the BINARY hot-region SEG, "region_seg".)
SERIES_OFFSETS: dict[str, int] = {"montage": 2, "sr": 3, "seg": 4, "gsps": 5, "summary": 7, "region_seg": 8}
#: The SC overlay series of the method with series slot ``k`` is ``base + METHOD_SERIES_OFFSET + k``.
METHOD_SERIES_OFFSET = 10
#: Largest series slot a method may have (so its series stays in the reserved range).
MAX_SERIES_SLOT = 79
#: Series Number offset of the SC overlays of methods without a record (plugins, test doubles).
UNRECORDED_METHOD_OFFSET = 9
#: Series Numbers ``[base, base + SERIES_SPAN)`` are mammoxai's.
SERIES_SPAN = 100


def in_our_range(series_number: int | None, series_number_base: int) -> bool:
    """Whether a Series Number lies in mammoxai's reserved range."""
    return series_number is not None and series_number_base <= int(series_number) < series_number_base + SERIES_SPAN
