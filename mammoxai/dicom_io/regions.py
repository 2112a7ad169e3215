"""Hot regions of an explanation map: threshold → connected components → outer contours → polygons.

Coordinates are on the *stored* pixel grid of the source image, as DICOM SR
SCOORD and GSPS ``PIXEL`` units define them (PS3.3 C.18.6.1.2, C.10.5.1.1):
``(x, y) = (column, row)``, the origin at the top-left corner of the
top-left pixel, so the centre of pixel ``(r, c)`` is ``(c + 0.5, r + 0.5)``.

A region is a connected set of pixels whose value is at least
``threshold × max`` of the map's positive part (signed maps: evidence *for*
the predicted class only). Regions are ranked by attribution mass (sum of
the positive map inside) and the first ``max_regions`` are kept. Holes are
ignored (outer contour only). To stay fast on 2600 × 4700 maps, the map is
block-averaged to at most :data:`WORK_SIZE` pixels on its long side first;
polygons are simplified to about one working pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure

#: Long side (pixels) of the grid the regions are searched on.
WORK_SIZE = 512


@dataclass(frozen=True)
class HotRegion:
    """One hot region of a map.

    ``polygon`` is ``(N, 2)`` float32 ``(column, row)`` on the stored grid,
    closed (first point == last point), N ≥ 4. ``peak`` / ``mean`` are of the
    map normalised by its positive maximum (in [0, 1]); ``mass_fraction`` is
    the share of the map's positive attribution inside the region.
    """

    polygon: np.ndarray
    area_px: float
    peak: float
    mean: float
    mass_fraction: float
    centroid: tuple[float, float]   # (column, row), stored grid


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor × factor`` blocks (the last row/column of blocks may be smaller)."""
    if factor <= 1:
        return arr
    h, w = arr.shape
    r_idx, c_idx = np.arange(0, h, factor), np.arange(0, w, factor)
    sums = np.add.reduceat(np.add.reduceat(arr, r_idx, axis=0, dtype=np.float64), c_idx, axis=1)
    counts = np.outer(np.diff(np.append(r_idx, h)), np.diff(np.append(c_idx, w)))
    return (sums / counts).astype(np.float32)


def find_hot_regions(heatmap: np.ndarray, *, threshold: float = 0.5, max_regions: int = 3) -> list[HotRegion]:
    """The hottest connected regions of ``heatmap`` (stored grid ``(Rows, Columns)``), best first.

    Returns ``[]`` for a map with no positive value. ``threshold`` is a
    fraction of the positive maximum, in (0, 1).
    """
    if heatmap.ndim != 2 or min(heatmap.shape) < 2:
        raise ValueError(f"heatmap must be a 2-D array of at least 2 × 2, got shape {heatmap.shape}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}")
    rows, cols = heatmap.shape
    positive = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    positive = np.maximum(positive, 0.0)
    factor = max(1, int(np.ceil(max(rows, cols) / WORK_SIZE)))
    small = _block_mean(positive, factor)
    peak = float(small.max())
    if peak <= 0.0:
        return []
    norm = small / peak
    mask = norm >= threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    masses = ndimage.sum(norm, labels, index)
    total_mass = float(norm.sum())
    order = np.argsort(-masses)[:max_regions]
    # Scale from working-grid pixel-centre indices to stored-grid SCOORD coordinates.
    sy, sx = rows / small.shape[0], cols / small.shape[1]
    regions: list[HotRegion] = []
    for k in order:
        label = int(index[k])
        component = labels == label
        padded = np.pad(component, 1).astype(np.float32)
        contours = measure.find_contours(padded, 0.5)
        if not contours:
            continue
        contour = max(contours, key=len) - 1.0          # undo the padding
        contour = measure.approximate_polygon(contour, tolerance=0.5)
        if len(contour) < 4:                            # a 1-pixel component: use its square
            r, c = np.argwhere(component)[0]
            contour = np.array([[r - 0.5, c - 0.5], [r - 0.5, c + 0.5], [r + 0.5, c + 0.5],
                                [r + 0.5, c - 0.5], [r - 0.5, c - 0.5]])
        xy = np.empty((len(contour), 2), dtype=np.float32)
        xy[:, 0] = np.clip((contour[:, 1] + 0.5) * sx, 0.0, cols)
        xy[:, 1] = np.clip((contour[:, 0] + 0.5) * sy, 0.0, rows)
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        values = norm[component]
        rr, cc = np.nonzero(component)
        regions.append(HotRegion(
            polygon=xy,
            area_px=float(component.sum() * sx * sy),
            peak=float(values.max()),
            mean=float(values.mean()),
            mass_fraction=float(masses[k] / total_mass) if total_mass > 0 else 0.0,
            centroid=(float((cc.mean() + 0.5) * sx), float((rr.mean() + 0.5) * sy)),
        ))
    return regions
