"""Preprocessing: exact geometry round trip (crop, flip, resize), bit depths, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammoxai.models.phantoms import generate_phantom
from mammoxai.models.preprocess import (
    Geometry, PreprocessError, find_breast, normalise_intensity, preprocess, preprocess_array, resize,
)

SIZE = (256, 208)


class Spec:
    input_size = SIZE
    in_chans = 1
    mean = (0.3,)
    std = (0.3,)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_mask_round_trip_lands_on_the_lesion(laterality, view):
    for seed, finding in [(1, "benign_mass"), (2, "malignant_mass"), (3, "calcifications")]:
        p = generate_phantom(seed, finding=finding, laterality=laterality, view=view, shape=(768, 624))
        x, geometry = preprocess_array(p.image, p.laterality, SIZE)
        assert x.shape == SIZE and x.dtype == np.float32
        assert geometry.flipped == (laterality == "R")
        model_map = geometry.to_model(p.mask)                    # a "heatmap" made at model resolution
        back = geometry.to_original(model_map)
        assert back.shape == p.image.shape and back.dtype == np.float32
        assert _iou(back > 0.5, p.mask) > 0.8
        # the brightest point of the mapped-back map is on the lesion
        assert p.mask.flat[int(np.argmax(back))]


def test_flip_puts_the_chest_wall_on_the_left_of_the_model_input():
    for laterality in ("L", "R"):
        p = generate_phantom(4, laterality=laterality, view="CC", shape=(512, 416))
        x, _ = preprocess_array(p.image, laterality, SIZE)
        half = SIZE[1] // 2
        assert x[:, :half].mean() > 1.5 * x[:, half:].mean()


def test_crop_is_tight_around_the_breast_and_keeps_the_aspect_ratio():
    p = generate_phantom(8, view="CC", laterality="L", shape=(1024, 832))
    _, geometry = preprocess_array(p.image, "L", SIZE)
    r0, c0, r1, c1 = geometry.crop_box
    assert (r1 - r0) * (c1 - c0) < 0.95 * p.image.size            # it did crop
    assert (r1 - r0) / (c1 - c0) == pytest.approx(SIZE[0] / SIZE[1], rel=0.02)
    outside = np.ones(p.image.shape, dtype=bool)
    outside[max(r0, 0):r1, max(c0, 0):c1] = False
    assert not p.mask[outside].any()
    back = geometry.to_original(np.ones(SIZE, dtype=np.float32))
    assert np.all(back[outside] == 0) and np.allclose(back[~outside], 1.0)


def test_crop_box_may_extend_past_the_image_and_round_trips():
    # a wide, short image: the box must grow taller than the image to keep the aspect ratio
    img = np.zeros((100, 400), dtype=np.uint16)
    img[20:80, 0:300] = 2000
    img[45:55, 140:160] = 4000
    x, geometry = preprocess_array(img, "L", SIZE)
    r0, _, r1, _ = geometry.crop_box
    assert r0 < 0 and r1 > 100
    spot = img == 4000
    assert _iou(geometry.to_original(geometry.to_model(spot)) > 0.5, spot) > 0.6
    assert x[0].max() == 0.0                                      # padding is background


def test_bit_depths_and_float_give_the_same_input():
    p = generate_phantom(11, shape=(512, 416), bits_stored=16)
    unit = p.image.astype(np.float64) / (2 ** 16 - 1)
    variants = {
        "uint8": np.rint(unit * 255).astype(np.uint8),
        "uint12": np.rint(unit * 4095).astype(np.uint16),
        "uint16": p.image,
        "float32": unit.astype(np.float32),
        "int32": np.rint(unit * 4095).astype(np.int32) - 1000,  # an offset (e.g. signed storage) is removed
    }
    reference, geometry = preprocess_array(variants["uint16"], p.laterality, SIZE)
    for name, image in variants.items():
        x, g = preprocess_array(image, p.laterality, SIZE)
        assert g == geometry, name
        assert np.abs(x - reference).mean() < 0.01, name


def test_preprocess_tensor_normalisation_and_channels():
    p = generate_phantom(2, shape=(256, 208))
    tensor, geometry = preprocess(p.image, p.laterality, Spec)
    raw, _ = preprocess_array(p.image, p.laterality, SIZE)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, 1, *SIZE) and tensor.dtype == torch.float32
    assert np.allclose(tensor[0, 0].numpy(), (raw - 0.3) / 0.3, atol=1e-6)

    class Spec3(Spec):
        in_chans = 3
        mean = (0.1, 0.2, 0.3)
        std = (1.0, 2.0, 3.0)

    t3, _ = preprocess(p.image, p.laterality, Spec3)
    assert t3.shape == (1, 3, *SIZE)
    assert np.allclose(t3[0, 2].numpy(), (raw - 0.3) / 3.0, atol=1e-6)


def test_laterality_unknown_follows_the_tissue_and_pixels_beat_a_wrong_laterality():
    right = generate_phantom(5, laterality="R", shape=(256, 208))
    left = generate_phantom(5, laterality="L", shape=(256, 208))
    assert preprocess_array(right.image, None, SIZE)[1].flipped is True
    assert preprocess_array(left.image, None, SIZE)[1].flipped is False
    assert preprocess_array(left.image, "R", SIZE)[1].flipped is False       # stored against the convention


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 64, 64), dtype=np.uint16), "2-D"),
    (np.zeros((64, 64, 3), dtype=np.uint8), "2-D"),
    (np.zeros(100, dtype=np.uint16), "2-D"),
    (np.zeros((64, 64), dtype=bool), "dtype"),
    (np.zeros((4, 4), dtype=np.uint16), "too small"),
    (np.full((64, 64), np.nan, dtype=np.float32), "finite"),
])
def test_invalid_images_are_rejected(bad, match):
    with pytest.raises(PreprocessError, match=match):
        preprocess(bad, None, Spec)


def test_invalid_laterality_and_geometry_shapes():
    img = generate_phantom(0, shape=(128, 104)).image
    with pytest.raises(PreprocessError, match="laterality"):
        preprocess_array(img, "left", SIZE)
    _, geometry = preprocess_array(img, None, SIZE)
    with pytest.raises(ValueError, match="to_original"):
        geometry.to_original(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="to_model"):
        geometry.to_model(np.zeros((10, 10)))
    with pytest.raises(ValueError, match="crop_box"):
        Geometry((100, 100), (50, 50, 40, 60), False, (32, 32))


def test_geometry_handles_batches_of_maps():
    g = Geometry(original_shape=(300, 200), crop_box=(10, 20, 290, 180), flipped=True, input_size=(56, 32))
    maps = np.random.default_rng(0).random((3, 56, 32)).astype(np.float32)
    back = g.to_original(maps)
    assert back.shape == (3, 300, 200)
    for i in range(3):
        assert np.array_equal(back[i], g.to_original(maps[i]))
    # the model's left column lands on the crop's right edge when flipped
    left_only = np.zeros((56, 32), dtype=np.float32)
    left_only[:, 0] = 1.0
    cols = np.nonzero(g.to_original(left_only).any(axis=0))[0]
    assert cols.min() > 150 and cols.max() == 179


def test_resize_preserves_constants_and_mean():
    ones = np.ones((97, 53), dtype=np.float32)
    assert np.allclose(resize(ones, (13, 200)), 1.0)
    rng = np.random.default_rng(1)
    img = rng.random((400, 300)).astype(np.float32)
    assert resize(img, (100, 75)).mean() == pytest.approx(img.mean(), rel=0.01)
    with pytest.raises(ValueError):
        resize(np.zeros(5), (2, 2))


def test_find_breast_and_normalise_intensity():
    p = generate_phantom(3, shape=(512, 416))
    mask, step = find_breast(p.image)
    assert step == 1 and mask.shape == p.image.shape
    from mammoxai.models.phantoms import breast_mask
    assert _iou(mask, breast_mask(p)) > 0.9
    norm = normalise_intensity(p.image, mask, step)
    assert norm.min() >= 0.0 and norm.max() <= 2.0
    assert np.median(norm[~mask]) < 0.05 and np.percentile(norm[mask], 99.5) == pytest.approx(1.0, abs=0.02)
    flat, _ = find_breast(np.full((64, 64), 7, dtype=np.uint16))
    assert flat.all()
