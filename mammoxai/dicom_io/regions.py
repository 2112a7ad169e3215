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

Only what is needed is imported: :func:`skimage.measure.find_contours` (its
own submodule) and :func:`approximate_polygon` here, a port of scikit-image's
(whose module imports ``scipy.signal``, 1 to 2 s at the first image of a process).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

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


def _pairwise_sum(parts: list[np.ndarray]) -> np.ndarray:
    """The float64 sum of ``parts`` (at most 127 arrays of one shape) in the order of numpy's pairwise
    summation (``pairwise_sum`` in numpy's ``loops_utils.h``): one by one below 8 terms, else 8 running
    sums combined as a tree, then the remaining terms one by one. Returns a new array."""
    if len(parts) < 8:
        total = parts[0].astype(np.float64)
        for part in parts[1:]:
            total += part
        return total
    lanes = [part.astype(np.float64) for part in parts[:8]]
    full = len(parts) - len(parts) % 8
    for i in range(8, full, 8):
        for j in range(8):
            lanes[j] += parts[i + j]
    total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    for part in parts[full:]:
        total += part
    return total


def _block_sums(arr: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """float64 sums of ``factor`` consecutive rows (``axis`` 0) or columns (1) of ``arr``, the last block
    possibly shorter: ``np.add.reduceat(arr, range(0, n, factor), axis, dtype=float64)`` to the bit.

    reduceat adds each block as ``first + pairwise_sum(rest)``, one inner-loop call per block and per
    position along the other axis (850 000 calls on a 2048 × 1664 map: 10 ms); here each term is one
    whole-array operation in the same order (tests/dicom_write/test_write_speed_equivalence.py checks it).
    """
    rows = arr if axis == 0 else arr.T
    n = rows.shape[0]
    full = n // factor

    def add_blocks(first: np.ndarray, rest: list[np.ndarray]) -> np.ndarray:
        out = first.astype(np.float64)
        if rest:
            out += _pairwise_sum(rest)
        return out

    pieces = []
    if full:
        blocks = rows[:full * factor].reshape(full, factor, -1)
        pieces.append(add_blocks(blocks[:, 0], [blocks[:, i] for i in range(1, factor)]))
    if n % factor:
        tail = rows[full * factor:]
        pieces.append(add_blocks(tail[:1], [tail[i:i + 1] for i in range(1, len(tail))]))
    sums = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return sums if axis == 0 else sums.T


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor × factor`` blocks (the last row/column of blocks may be smaller), float32 of the
    float64 block sums (rows first, then columns; see :func:`_block_sums`)."""
    if factor <= 1:
        return arr
    h, w = arr.shape
    sums = _block_sums(_block_sums(arr, factor, 0), factor, 1)
    r_idx, c_idx = np.arange(0, h, factor), np.arange(0, w, factor)
    counts = np.outer(np.diff(np.append(r_idx, h)), np.diff(np.append(c_idx, w)))
    return (sums / counts).astype(np.float32)


def approximate_polygon(coords: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a polygonal chain (``(K, 2)`` row, column), within ``tolerance``.

    A line-for-line port of ``skimage.measure.approximate_polygon`` (scikit-image 0.26, BSD-3-Clause), same
    results; ported because importing scikit-image's module imports ``scipy.signal`` (see the module docstring).
    """
    if tolerance <= 0:
        return coords
    chain = np.zeros(coords.shape[0], "bool")
    dists = np.zeros(coords.shape[0])               # distance of every point to its current segment
    chain[0] = True
    chain[-1] = True
    pos_stack = [(0, chain.shape[0] - 1)]
    while pos_stack:
        start, end = pos_stack.pop()
        r0, c0 = coords[start, :]
        r1, c1 = coords[end, :]
        dr = r1 - r0
        dc = c1 - c0
        segment_angle = -np.arctan2(dr, dc)
        segment_dist = c0 * np.sin(segment_angle) + r0 * np.cos(segment_angle)
        segment_coords = coords[start + 1:end, :]
        segment_dists = dists[start + 1:end]
        # perpendicular distance where the point projects inside the segment, else to the nearer end
        dr0 = segment_coords[:, 0] - r0
        dc0 = segment_coords[:, 1] - c0
        dr1 = segment_coords[:, 0] - r1
        dc1 = segment_coords[:, 1] - c1
        projected_lengths0 = dr0 * dr + dc0 * dc
        projected_lengths1 = -dr1 * dr - dc1 * dc
        perp = np.logical_and(projected_lengths0 > 0, projected_lengths1 > 0)
        eucl = np.logical_not(perp)
        segment_dists[perp] = np.abs(segment_coords[perp, 0] * np.cos(segment_angle)
                                     + segment_coords[perp, 1] * np.sin(segment_angle) - segment_dist)
        segment_dists[eucl] = np.minimum(np.sqrt(dc0[eucl] ** 2 + dr0[eucl] ** 2),
                                         np.sqrt(dc1[eucl] ** 2 + dr1[eucl] ** 2))
        if np.any(segment_dists > tolerance):
            new_end = start + np.argmax(segment_dists) + 1
            pos_stack.append((new_end, end))
            pos_stack.append((start, new_end))
            chain[new_end] = True
    return coords[chain, :]


def _positive_part(heatmap: np.ndarray) -> np.ndarray:
    """float32 ``max(heatmap, 0)`` with NaN and infinities counted as 0 (a new array)."""
    h = np.asarray(heatmap, dtype=np.float32)
    if h.size and not (np.isfinite(h.min()) and np.isfinite(h.max())):
        h = np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
    return np.maximum(h, 0.0)


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
    positive = _positive_part(heatmap)
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
        contours = find_contours(padded, 0.5)
        if not contours:
            continue
        contour = max(contours, key=len) - 1.0          # undo the padding
        contour = approximate_polygon(contour, tolerance=0.5)
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
