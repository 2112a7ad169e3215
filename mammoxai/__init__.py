"""mammoxai: explainable AI for mammography, as a DICOM node.

Demo models shipped with this package are trained on synthetic phantoms only:
they are not for clinical use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
