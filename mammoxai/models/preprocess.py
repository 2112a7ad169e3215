"""Mammogram array -> model input tensor, keeping the geometry to map results back exactly.

Steps of :func:`preprocess` (all recorded in :class:`Geometry`, which is numpy-only):

1. find the breast: threshold a little above the background level, keep the
   largest connected component;
2. crop to its bounding box plus a margin, grown to the model's aspect ratio
   (the box may reach past the image edge: that part is padded with background);
3. flip horizontally so that every breast faces the same way: the chest wall on
   the LEFT of the model input (as a LEFT breast is displayed). The flip follows
   ``laterality`` (``"R"`` -> flip) unless the pixels clearly show the chest wall
   on the other side (a file stored against the convention); without laterality
   the side that holds more tissue is the chest-wall side;
4. resize (separable triangle filter: area-like when shrinking, bilinear when
   enlarging, pixel centres aligned) to ``input_size``;
5. intensity: ``(x - p1(image)) / (p99.5(breast) - p1(image))`` clipped to [0, 2]
   (0 = background, 1 = the densest common tissue), pixels outside the breast
   (labels, markers) set to 0, then ``(x - mean) / std`` per
   channel from the model's metadata; the single channel is repeated when the
   model wants 3.

``Geometry.to_model`` applies 2-4 to any (H, W) array (e.g. a lesion mask) and
``Geometry.to_original`` maps a model-resolution map back onto the original
stored pixel grid (inverse resize, un-flip, zeros outside the crop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, Sequence

import numpy as np

from ..errors import MammoxaiError

log = logging.getLogger(__name__)

__all__ = ["Geometry", "PreprocessError", "PreprocessSpec", "find_breast", "normalise_intensity",
           "preprocess", "preprocess_array", "resize"]


class PreprocessError(MammoxaiError, ValueError):
    """The image cannot be turned into a model input (not 2-D, empty, wrong dtype)."""


class PreprocessSpec(Protocol):
    """What preprocessing needs from the model's metadata (:class:`~mammoxai.models.classifier.ModelMetadata`)."""

    input_size: Sequence[int]
    in_chans: int
    mean: Sequence[float]
    std: Sequence[float]


@lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of a triangle-filter resize with aligned pixel centres."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.arange(n_in, dtype=np.float64)
    weights = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    sums = weights.sum(axis=1, keepdims=True)
    # an output centre past the last input centre (enlarging): use the nearest edge pixel
    empty = sums[:, 0] == 0
    if empty.any():
        nearest = np.clip(np.rint(centres[empty]), 0, n_in - 1).astype(int)
        weights[np.nonzero(empty)[0], nearest] = 1.0
        sums = weights.sum(axis=1, keepdims=True)
    out = (weights / sums).astype(np.float32)
    out.setflags(write=False)
    return out


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``array`` to ``size`` (rows, columns); float32 out.

    Triangle filter with aligned pixel centres: bilinear when enlarging, an
    antialiased (area-like) average when shrinking. Linear in ``array``.
    """
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim < 2:
        raise ValueError(f"resize: need at least 2 dimensions, got shape {arr.shape}")
    rows, cols = int(size[0]), int(size[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"resize: size {size!r} must be positive")
    wr = _resize_matrix(arr.shape[-2], rows)
    wc = _resize_matrix(arr.shape[-1], cols)
    if arr.shape[-2] * cols <= arr.shape[-1] * rows:  # cheaper order first
        return np.ascontiguousarray((wr @ arr) @ wc.T)
    return np.ascontiguousarray(wr @ (arr @ wc.T))


@dataclass(frozen=True)
class Geometry:
    """How the original stored pixel grid maps onto the model input.

    ``original_shape``: (rows, columns) of the original image.
    ``crop_box``: (r0, c0, r1, c1), end-exclusive, in original pixels; may reach
    past the image (padding). ``flipped``: the crop was flipped left-right.
    ``input_size``: (rows, columns) of the model input.
    Order: crop -> flip -> resize.
    """

    original_shape: tuple[int, int]
    crop_box: tuple[int, int, int, int]
    flipped: bool
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_shape", tuple(int(v) for v in self.original_shape))
        object.__setattr__(self, "crop_box", tuple(int(v) for v in self.crop_box))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "flipped", bool(self.flipped))
        if len(self.original_shape) != 2 or min(self.original_shape) < 1:
            raise ValueError(f"Geometry: original_shape {self.original_shape} must be 2 positive ints")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"Geometry: input_size {self.input_size} must be 2 positive ints")
        if len(self.crop_box) != 4:
            raise ValueError(f"Geometry: crop_box {self.crop_box} must be (r0, c0, r1, c1)")
        r0, c0, r1, c1 = self.crop_box
        h, w = self.original_shape
        if r1 <= r0 or c1 <= c0 or r1 <= 0 or c1 <= 0 or r0 >= h or c0 >= w:
            raise ValueError(f"Geometry: crop_box {self.crop_box} is empty or outside the image {self.original_shape}")

    @property
    def crop_shape(self) -> tuple[int, int]:
        r0, c0, r1, c1 = self.crop_box
        return (r1 - r0, c1 - c0)

    def _crop(self, arr: np.ndarray, fill: float) -> np.ndarray:
        r0, c0, r1, c1 = self.crop_box
        h, w = self.original_shape
        if r0 >= 0 and c0 >= 0 and r1 <= h and c1 <= w:
            return arr[..., r0:r1, c0:c1]
        out = np.full(arr.shape[:-2] + self.crop_shape, fill, dtype=arr.dtype)
        sr0, sc0, sr1, sc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        out[..., sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = arr[..., sr0:sr1, sc0:sc1]
        return out

    def to_model(self, array_hw: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Map an (…, H, W) array on the original grid to (…, h, w) float32 at model resolution.

        Crop (``fill`` past the image edge), flip, resize; e.g. a lesion mask
        becomes a fractional mask in [0, 1].
        """
        arr = np.asarray(array_hw)
        if arr.shape[-2:] != self.original_shape:
            raise ValueError(f"Geometry.to_model: array shape {arr.shape} does not end with {self.original_shape}")
        arr = self._crop(arr.astype(np.float32, copy=False), fill)
        if self.flipped:
            arr = arr[..., :, ::-1]
        return resize(arr, self.input_size)

    def to_original(self, map_hw: np.ndarray) -> np.ndarray:
        """Map an (…, h, w) model-resolution map onto the original grid: (…, H, W) float32.

        Bilinear resize to the crop box, un-flip, zeros outside the crop.
        """
        arr = np.asarray(map_hw, dtype=np.float32)
        if arr.shape[-2:] != self.input_size:
            raise ValueError(f"Geometry.to_original: map shape {arr.shape} does not end with {self.input_size}")
        up = resize(arr, self.crop_shape)
        if self.flipped:
            up = up[..., :, ::-1]
        h, w = self.original_shape
        r0, c0, r1, c1 = self.crop_box
        out = np.zeros(arr.shape[:-2] + (h, w), dtype=np.float32)
        sr0, sc0, sr1, sc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        out[..., sr0:sr1, sc0:sc1] = up[..., sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0]
        return out


def _as_float_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise PreprocessError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and 1 in (image.shape[0], image.shape[-1]):
        image = image.reshape(image.shape[:2] if image.shape[-1] == 1 else image.shape[1:])
    if image.ndim != 2:
        raise PreprocessError(f"image must be 2-D (rows, columns) grayscale, got shape {image.shape}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise PreprocessError(f"image dtype {image.dtype} is not an integer or float type")
    if min(image.shape) < 8:
        raise PreprocessError(f"image shape {image.shape} is too small (need at least 8 x 8)")
    arr = image.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        if not finite.any():
            raise PreprocessError("image has no finite pixel values")
        arr = np.where(finite, arr, np.float32(np.nanmin(np.where(finite, arr, np.nan))))
    return arr


def find_breast(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Breast mask on a subsampled grid and the subsampling step.

    Returns (mask on ``image[::step, ::step]``, step). Pixels above
    ``p1 + 0.1 * (p99 - p1)`` form the candidates; the largest connected
    component (after a small opening) is the breast. An image with no contrast
    gives an all-True mask.
    """
    from scipy import ndimage

    arr = _as_float_image(image)
    step = max(1, int(np.ceil(max(arr.shape) / 512)))
    small = arr[::step, ::step]
    lo, hi = np.percentile(small, [1.0, 99.0])
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return np.ones(small.shape, dtype=bool), step
    cand = small > lo + 0.1 * (hi - lo)
    # a 1 % frame and an opening cut thin bright links (film edges, scanner lines) to labels and markers
    frame = max(1, int(round(0.01 * max(small.shape))))
    core = cand.copy()
    core[:frame, :] = core[-frame:, :] = False
    core[:, :frame] = core[:, -frame:] = False
    radius = max(1, int(round(0.008 * max(small.shape))))
    core = ndimage.binary_opening(core, structure=np.ones((2 * radius + 1,) * 2, dtype=bool))
    labels, n = ndimage.label(core)
    if n == 0:
        return np.ones(small.shape, dtype=bool), step
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = labels == int(sizes.argmax())
    # grow back to the candidate pixels next to it (the skin line, the image edge)
    grown = ndimage.binary_dilation(biggest, structure=np.ones((2 * radius + 3,) * 2, dtype=bool), iterations=2)
    return grown & cand, step


def normalise_intensity(image: np.ndarray, breast_small: np.ndarray | None = None, step: int = 1) -> np.ndarray:
    """float32 image with background ~0 and dense tissue ~1, clipped to [0, 2] (see the module docstring)."""
    arr = _as_float_image(image)
    small = arr[::step, ::step]
    lo = float(np.percentile(small, 1.0))
    inside = small[breast_small] if breast_small is not None and breast_small.any() else small
    hi = float(np.percentile(inside, 99.5))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0.0, 2.0).astype(np.float32, copy=False)


def _decide_flip(mask_small: np.ndarray, laterality: str | None) -> bool:
    cols = mask_small.sum(axis=0).astype(np.float64)
    half = len(cols) // 2
    left, right = cols[:half].sum(), cols[len(cols) - half:].sum()
    # the chest wall side holds more tissue; "clear" means at least 1.5 times more
    tissue_side = "right" if right > left else "left"
    clear = max(left, right) >= 1.5 * max(min(left, right), 1.0)
    if laterality in ("L", "R"):
        expected = "left" if laterality == "L" else "right"
        if clear and tissue_side != expected:
            log.warning("laterality %s but the chest wall is on the image's %s: following the pixels",
                        laterality, tissue_side)
            return tissue_side == "right"
        return laterality == "R"
    return tissue_side == "right"


def _crop_box(mask_small: np.ndarray, step: int, shape: tuple[int, int],
              input_size: tuple[int, int], margin: float = 0.02) -> tuple[int, int, int, int]:
    h, w = shape
    rows = np.nonzero(mask_small.any(axis=1))[0]
    cols = np.nonzero(mask_small.any(axis=0))[0]
    if len(rows) == 0:
        r0, r1, c0, c1 = 0, h, 0, w
    else:
        r0, r1 = rows[0] * step, min(h, (rows[-1] + 1) * step)
        c0, c1 = cols[0] * step, min(w, (cols[-1] + 1) * step)
    mr, mc = max(2, int(round(margin * h))), max(2, int(round(margin * w)))
    r0, r1, c0, c1 = max(0, r0 - mr), min(h, r1 + mr), max(0, c0 - mc), min(w, c1 + mc)
    # grow the short side to the model's aspect ratio (no anisotropic scaling)
    aspect = input_size[0] / input_size[1]
    bh, bw = r1 - r0, c1 - c0
    if bh / bw > aspect:
        c0, c1 = _grow(c0, c1, int(round(bh / aspect)), w)
    else:
        r0, r1 = _grow(r0, r1, int(round(bw * aspect)), h)
    return int(r0), int(c0), int(r1), int(c1)


def _grow(a: int, b: int, need: int, limit: int) -> tuple[int, int]:
    """Grow [a, b) to length ``need`` around its centre, shifted to stay inside [0, limit) when possible."""
    need = max(need, b - a)
    start = (a + b) // 2 - need // 2
    if need <= limit:
        start = min(max(start, 0), limit - need)
    else:
        start = (limit - need) // 2
    return start, start + need


def preprocess_array(image: np.ndarray, laterality: str | None, input_size: Sequence[int]) -> tuple[np.ndarray, "Geometry"]:
    """Steps 1-5 before mean/std: returns float32 (h, w) in [0, 2] and the :class:`Geometry`."""
    size = (int(input_size[0]), int(input_size[1]))
    if laterality is not None and laterality not in ("L", "R"):
        raise PreprocessError(f"laterality {laterality!r} must be 'L', 'R' or None")
    arr = _as_float_image(image)
    mask_small, step = find_breast(arr)
    norm = normalise_intensity(arr, mask_small, step)
    # blank what is not the breast (labels, markers, film edges): 0 = background
    full = np.repeat(np.repeat(mask_small, step, axis=0), step, axis=1)[:arr.shape[0], :arr.shape[1]]
    norm = np.where(full, norm, np.float32(0.0))
    geometry = Geometry(
        original_shape=arr.shape,
        crop_box=_crop_box(mask_small, step, arr.shape, size),
        flipped=_decide_flip(mask_small, laterality),
        input_size=size,
    )
    return geometry.to_model(norm, fill=0.0), geometry


def preprocess(image: np.ndarray, laterality: str | None, spec: PreprocessSpec):
    """Turn a MONOCHROME2 mammogram array (any bit depth, uint8/uint16/int/float) into the model input.

    Returns ``(tensor (1, C, h, w) float32 on the CPU, Geometry)``; ``spec`` gives
    ``input_size``, ``in_chans``, ``mean`` and ``std`` (one value per channel,
    or one for all). Raises :class:`PreprocessError` for a non-2-D or empty image.
    """
    import torch

    x, geometry = preprocess_array(image, laterality, spec.input_size)
    chans = int(spec.in_chans)
    mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float32), (chans,))
    std = np.broadcast_to(np.asarray(spec.std, dtype=np.float32), (chans,))
    stacked = (x[None, :, :] - mean[:, None, None]) / std[:, None, None]
    return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).unsqueeze(0), geometry
