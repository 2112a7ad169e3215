"""Coded concepts used in mammoxai's output objects, and the private ``99MAMMOXAI`` coding scheme.

Standard codes (DICOM ``DCM``, SNOMED CT ``SCT``, UCUM) are used wherever one
fits; the rest come from the private scheme **99MAMMOXAI** (PS3.3 8.2: a
Coding Scheme Designator starting with ``99`` is a local scheme). Every
object that uses it lists it in the Coding Scheme Identification Sequence
(0008,0110) with its name and the responsible organisation.

99MAMMOXAI code values (Code Value is SH, at most 16 characters):

========================  =====================================================
``MXAI-PMALIGN``          Probability of malignancy (NUM, unit UCUM ``1``)
``MXAI-PCLASS``           Probability of the class named in a TEXT modifier
``MXAI-HOTREGION``        Explanation hot region (finding type of a planar ROI)
``MXAI-EXPLMETHOD``       Explanation method (concept name; value = method code)
``MXAI-M-<ABBR>``         One explanation method (``code`` of its explainer class's record)
``MXAI-Q-<ABBR>``         One quality score of a map (table :data:`QUALITY_CODES`)
``MXAI-RMASS``            Fraction of the map's positive attribution in a region
``MXAI-EXPLFAIL``         Explanation method failed (TEXT: "method: reason")
``MXAI-CAUTION``          Caution about an explanation map (TEXT), e.g. it fails the
                         model-randomisation sanity check
``MXAI-NOINFO``           Explanation map not informative (constant, near-constant or
                         non-finite; TEXT: the reason); the map is not rendered
``MXAI-ATTRIB``           Attribution map (SEG segmented property type)
``MXAI-BREASTMAX``        Highest probability of malignancy of one breast
``MXAI-RS-<ABBR>``        "<method> attribution in region": share of the method's positive
                         attribution inside one hot region (unit ``%``)
``MXAI-DOMSCORE`` ...     Domain check: score, threshold, verdict (``MXAI-DOMCHECK`` =
                         ``MXAI-INDOMAIN`` / ``MXAI-OUTDOMAIN`` / ``MXAI-DOMNOTCHK``),
                         calibration (``MXAI-CALIB`` = ``MXAI-CALIBYES`` / ``MXAI-CALIBNO``),
                         ``MXAI-WITHHELD`` (Finding when the prediction is withheld) and
                         ``MXAI-PREDCAUT`` (TEXT caution about the prediction)
``MXAI-SECONDS``          Computation time of an explanation (unit UCUM ``s``)
``MXAI-P-<hash>``         Probability of another class (meaning names the class)
``MXAI-CL-<hash>``        A class name without a SNOMED CT concept
========================  =====================================================

Unknown method / score names get a code derived from the name
(``MXAI-M-`` / ``MXAI-Q-`` + a 7-hex-digit hash), with the name as meaning.
"""

from __future__ import annotations

import hashlib

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .results import MethodMap

SCHEME = "99MAMMOXAI"
SCHEME_NAME = "mammoxai private explanation codes"
SCHEME_RESPONSIBLE = "mammoxai project"
SCHEME_VERSION = "1"

#: Quality score key -> (short code suffix, meaning).
QUALITY_CODES: dict[str, tuple[str, str]] = {
    "faithfulness": ("FAITH", "Faithfulness (insertion AUC minus deletion AUC)"),
    "deletion_auc": ("DELAUC", "Deletion AUC"),
    "insertion_auc": ("INSAUC", "Insertion AUC"),
    "max_sensitivity": ("MAXSENS", "Max-sensitivity"),
    "sparseness": ("SPARSE", "Sparseness (Gini index)"),
    "pointing_game": ("POINT", "Pointing game hit"),
    "relevance_mass": ("RMASSACC", "Relevance mass accuracy"),
    "randomisation_rho": ("RANDRHO", "Rank correlation with map of randomised model"),
    "adversarial_flipped": ("ADVFLIP", "Decision flipped within perturbation budget"),
    "adversarial_epsilon": ("ADVEPS", "Smallest decision-flipping perturbation"),
    "adversarial_max_epsilon": ("ADVMAXEPS", "Largest perturbation tried"),
    "stability": ("STABIL", "Split-half stability of the map (Spearman-Brown)"),
    "completeness_error": ("COMPLERR", "Completeness error |sum of map - score difference|"),
}


def private(value: str, meaning: str) -> CodedConcept:
    """A 99MAMMOXAI code."""
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def _hashed(prefix: str, name: str) -> str:
    return prefix + hashlib.sha1(name.encode("utf-8")).hexdigest()[:7].upper()


def method_code(method_map: MethodMap) -> CodedConcept:
    """The code of a map's explanation method: ``MXAI-M-`` + the code suffix of the method's record
    (e.g. ``MXAI-M-GCAM`` for Grad-CAM), meaning its display name; a method without a record gets a
    code hashed from its registry name."""
    meaning = method_map.display_name or method_map.method
    if method_map.code:
        return private("MXAI-M-" + method_map.code, meaning)
    return private(_hashed("MXAI-M-", method_map.method), meaning)


def quality_code(key: str) -> CodedConcept:
    """The code of a quality score key, e.g. ``MXAI-Q-FAITH`` for ``faithfulness``."""
    if key in QUALITY_CODES:
        suffix, meaning = QUALITY_CODES[key]
        return private("MXAI-Q-" + suffix, meaning)
    return private(_hashed("MXAI-Q-", key), key)


PROBABILITY_OF_MALIGNANCY = private("MXAI-PMALIGN", "Probability of malignancy")
PROBABILITY_OF_CLASS = private("MXAI-PCLASS", "Probability of class")
HOT_REGION = private("MXAI-HOTREGION", "Explanation hot region")
EXPLANATION_METHOD = private("MXAI-EXPLMETHOD", "Explanation method")
REGION_MASS = private("MXAI-RMASS", "Fraction of positive attribution in region")
EXPLANATION_FAILED = private("MXAI-EXPLFAIL", "Explanation method failed")
EXPLANATION_CAUTION = private("MXAI-CAUTION", "Caution about explanation map")
MAP_NOT_INFORMATIVE = private("MXAI-NOINFO", "Explanation map not informative")
ATTRIBUTION_MAP = private("MXAI-ATTRIB", "Attribution map")
BREAST_MAX_PROBABILITY = private("MXAI-BREASTMAX", "Highest probability of malignancy of breast")
# The domain check and calibration of a prediction (SR classification group; added by helper F1 for issue 12).
DOMAIN_SCORE = private("MXAI-DOMSCORE", "Out-of-domain score")
DOMAIN_THRESHOLD = private("MXAI-DOMTHRESH", "Out-of-domain threshold")
DOMAIN_CHECK = private("MXAI-DOMCHECK", "Domain check")
IN_DOMAIN = private("MXAI-INDOMAIN", "In domain")
OUT_OF_DOMAIN = private("MXAI-OUTDOMAIN", "Out of domain")
DOMAIN_NOT_CHECKED = private("MXAI-DOMNOTCHK", "Domain not checked")
CALIBRATION = private("MXAI-CALIB", "Probability calibration")
CALIBRATED = private("MXAI-CALIBYES", "Probabilities calibrated")
NOT_CALIBRATED = private("MXAI-CALIBNO", "Probabilities not calibrated")
PREDICTION_WITHHELD = private("MXAI-WITHHELD", "Prediction withheld")
PREDICTION_CAUTION = private("MXAI-PREDCAUT", "Caution about the prediction")


def region_share_code(method_map: MethodMap) -> CodedConcept:
    """The code of "<method> attribution in region" (``MXAI-RS-`` + the method's code suffix): the share of
    one method's positive attribution inside a hot region. Per method, so that viewers that print a
    NUM's meaning as its label (OHIF) name the method."""
    meaning = f"{method_map.display_name or method_map.method} attribution in region"
    if method_map.code:
        return private("MXAI-RS-" + method_map.code, meaning)
    return private(_hashed("MXAI-RS-", method_map.method), meaning)

# Standard codes.
FINDING = CodedConcept(*codes.DCM.Finding)                       # (121071, DCM, "Finding")
MALIGNANT = CodedConcept(*codes.SCT.Malignant)                   # (21594007, SCT, "Malignant")
BENIGN = CodedConcept(*codes.SCT.Benign)                         # (30807003, SCT, "Benign")
MAMMOGRAPHY = CodedConcept(*codes.SCT.Mammography)               # (71651007, SCT, "Mammography")
BREAST = CodedConcept(*codes.SCT.Breast)                         # (76752008, SCT, "Breast")
#: (272741003, SCT, "Laterality"): concept of the classification group's laterality (a qualitative evaluation;
#: not a Finding Site (363698007), which OHIF prints as a label line "363698007: Breast").
LATERALITY = CodedConcept(*codes.SCT.Laterality)
LEFT = CodedConcept(*codes.SCT.Left)
RIGHT = CodedConcept(*codes.SCT.Right)
UNITLESS = CodedConcept(*codes.UCUM.NoUnits)                     # (1, UCUM, "no units")
PIXELS = CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="pixels")
ARTIFICIAL_INTELLIGENCE = CodedConcept(*codes.DCM.ArtificialIntelligence)  # (123110, DCM)
#: IHE Radiology AI Results (AIR): Purpose of Reference of the algorithm's Contributing Equipment item.
IHE_PROCESSING_ALGORITHM = ("Newcode1", "99IHE", "Processing Algorithm")


def class_code(name: str) -> CodedConcept:
    """A predicted class as a code: SCT Malignant / Benign when the name says so, else a 99MAMMOXAI code."""
    low = name.strip().lower()
    if low in {"malignant", "malignancy", "cancer"}:
        return MALIGNANT
    if low in {"benign"}:
        return BENIGN
    return private(_hashed("MXAI-CL-", name), name)


def class_probability_code(name: str) -> CodedConcept:
    """The 99MAMMOXAI code of "Probability of <class>" for a class other than the positive one."""
    return private(_hashed("MXAI-P-", name), f"Probability of {name}")


def laterality_code(laterality: str | None) -> CodedConcept | None:
    return {"L": LEFT, "R": RIGHT}.get(laterality or "")


def add_scheme_identification(ds: Dataset, *, private_scheme: bool = True) -> None:
    """List 99IHE (and, when ``private_scheme``, 99MAMMOXAI) in the Coding Scheme Identification Sequence."""
    items = list(ds.get("CodingSchemeIdentificationSequence", []))
    present = {str(i.get("CodingSchemeDesignator", "")) for i in items}
    if private_scheme and SCHEME not in present:
        item = Dataset()
        item.CodingSchemeDesignator = SCHEME
        item.CodingSchemeName = SCHEME_NAME
        item.CodingSchemeVersion = SCHEME_VERSION
        item.CodingSchemeResponsibleOrganization = SCHEME_RESPONSIBLE
        items.append(item)
    if "99IHE" not in present:
        item = Dataset()
        item.CodingSchemeDesignator = "99IHE"
        item.CodingSchemeName = "IHE interim codes"
        item.CodingSchemeResponsibleOrganization = "IHE"
        items.append(item)
    ds.CodingSchemeIdentificationSequence = items
