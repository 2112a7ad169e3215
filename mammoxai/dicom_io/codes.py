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
``MXAI-M-<ABBR>``         One explanation method (table :data:`METHOD_CODES`)
``MXAI-Q-<ABBR>``         One quality score of a map (table :data:`QUALITY_CODES`)
``MXAI-RPEAK``            Peak normalised attribution in a region (unit ``1``)
``MXAI-RMEAN``            Mean normalised attribution in a region (unit ``1``)
``MXAI-RMASS``            Fraction of the map's positive attribution in a region
``MXAI-EXPLFAIL``         Explanation method failed (TEXT: "method: reason")
``MXAI-CAUTION``          Caution about an explanation map (TEXT), e.g. it fails the
                         model-randomisation sanity check
``MXAI-ATTRIB``           Attribution map (SEG segmented property type)
``MXAI-BREASTMAX``        Highest probability of malignancy of one breast
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

SCHEME = "99MAMMOXAI"
SCHEME_NAME = "mammoxai private explanation codes"
SCHEME_RESPONSIBLE = "mammoxai project"
SCHEME_VERSION = "1"

#: Registry name -> (short code suffix, meaning).
METHOD_CODES: dict[str, tuple[str, str]] = {
    "saliency": ("SAL", "Saliency (input gradient)"),
    "gradient_x_input": ("GXI", "Gradient x Input"),
    "integrated_gradients": ("IG", "Integrated Gradients"),
    "smoothgrad": ("SG", "SmoothGrad"),
    "guided_backprop": ("GBP", "Guided Backpropagation"),
    "deeplift": ("DLIFT", "DeepLIFT"),
    "gradcam": ("GCAM", "Grad-CAM"),
    "gradcam_pp": ("GCAMPP", "Grad-CAM++"),
    "hirescam": ("HRCAM", "HiResCAM"),
    "xgradcam": ("XGCAM", "XGrad-CAM"),
    "layercam": ("LCAM", "LayerCAM"),
    "scorecam": ("SCAM", "Score-CAM"),
    "eigencam": ("ECAM", "Eigen-CAM"),
    "guided_gradcam": ("GGCAM", "Guided Grad-CAM"),
    "lrp": ("LRP", "Layer-wise Relevance Propagation"),
    "occlusion": ("OCCL", "Occlusion"),
    "rise": ("RISE", "RISE"),
    "lime": ("LIME", "LIME"),
    "kernel_shap": ("KSHAP", "Kernel SHAP"),
    "attention_rollout": ("ATTRO", "Attention Rollout"),
}

#: Quality score key -> (short code suffix, meaning).
QUALITY_CODES: dict[str, tuple[str, str]] = {
    "faithfulness": ("FAITH", "Faithfulness (correlation with deletion effect)"),
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
}


def private(value: str, meaning: str) -> CodedConcept:
    """A 99MAMMOXAI code."""
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def _hashed(prefix: str, name: str) -> str:
    return prefix + hashlib.sha1(name.encode("utf-8")).hexdigest()[:7].upper()


def method_code(method: str, display_name: str | None = None) -> CodedConcept:
    """The code of an explanation method (registry name), e.g. ``MXAI-M-GCAM`` for ``gradcam``."""
    if method in METHOD_CODES:
        suffix, meaning = METHOD_CODES[method]
        return private("MXAI-M-" + suffix, meaning)
    return private(_hashed("MXAI-M-", method), display_name or method)


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
REGION_PEAK = private("MXAI-RPEAK", "Peak normalised attribution in region")
REGION_MEAN = private("MXAI-RMEAN", "Mean normalised attribution in region")
REGION_MASS = private("MXAI-RMASS", "Fraction of positive attribution in region")
EXPLANATION_FAILED = private("MXAI-EXPLFAIL", "Explanation method failed")
EXPLANATION_CAUTION = private("MXAI-CAUTION", "Caution about explanation map")
ATTRIBUTION_MAP = private("MXAI-ATTRIB", "Attribution map")
BREAST_MAX_PROBABILITY = private("MXAI-BREASTMAX", "Highest probability of malignancy of breast")

# Standard codes.
FINDING = CodedConcept(*codes.DCM.Finding)                       # (121071, DCM, "Finding")
MALIGNANT = CodedConcept(*codes.SCT.Malignant)                   # (21594007, SCT, "Malignant")
BENIGN = CodedConcept(*codes.SCT.Benign)                         # (30807003, SCT, "Benign")
MAMMOGRAPHY = CodedConcept(*codes.SCT.Mammography)               # (71651007, SCT, "Mammography")
BREAST = CodedConcept(*codes.SCT.Breast)                         # (76752008, SCT, "Breast")
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
