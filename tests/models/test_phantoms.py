"""Phantoms: determinism, dtype/bit depth, lesion placement, orientation, pectoral muscle."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mammoxai.models.phantoms import FINDINGS, Phantom, breast_mask, generate_phantom, phantom_dataset

SHAPE = (256, 208)


def test_same_seed_same_phantom_and_different_seeds_differ():
    a = generate_phantom(5, shape=SHAPE)
    b = generate_phantom(5, shape=SHAPE)
    c = generate_phantom(6, shape=SHAPE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert (a.finding, a.laterality, a.view, a.density) == (b.finding, b.laterality, b.view, b.density)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("finding", FINDINGS)
def test_dtype_bits_mask_and_label(finding, bits):
    for seed in range(3):
        p = generate_phantom(seed, finding=finding, bits_stored=bits, shape=SHAPE)
        assert isinstance(p, Phantom)
        assert p.image.dtype == np.uint16 and p.image.shape == SHAPE
        assert int(p.image.max()) < 2 ** bits
        assert int(p.image.max()) > 2 ** (bits - 2)           # uses the range, not a sliver of it
        assert p.mask.dtype == bool and p.mask.shape == SHAPE
        assert p.bits_stored == bits and p.finding == finding and p.seed == seed
        assert p.label == int(finding in ("malignant_mass", "calcifications"))
        if finding == "normal":
            assert not p.mask.any()
        else:
            assert p.mask.sum() > 20
            # the lesion lies inside the breast
            assert (p.mask & breast_mask(p)).sum() >= 0.98 * p.mask.sum()


def test_lesion_is_brighter_than_its_surroundings():
    for finding in ("benign_mass", "malignant_mass", "calcifications"):
        for seed in range(4):
            p = generate_phantom(seed, finding=finding, shape=(512, 416))
            inside = p.image[p.mask].astype(float)
            ring = breast_mask(p) & ~p.mask
            assert np.percentile(inside, 90) > np.percentile(p.image[ring].astype(float), 75)


def test_left_and_right_are_mirror_images_and_chest_wall_side():
    for seed in range(6):
        left = generate_phantom(seed, laterality="L", shape=SHAPE)
        right = generate_phantom(seed, laterality="R", shape=SHAPE)
        assert np.array_equal(left.image[:, ::-1], right.image)
        assert np.array_equal(left.mask[:, ::-1], right.mask)
        tissue = breast_mask(left)
        half = SHAPE[1] // 2
        # LEFT breast: chest wall on the image's left edge, so the left half holds more tissue
        assert tissue[:, :half].sum() > 1.3 * tissue[:, half:].sum()
        assert tissue[:, 0].mean() > 0.5                 # the breast touches the chest-wall edge
        assert tissue[:, -1].mean() < 0.1                # and not the opposite edge
        assert left.chest_wall_side == "left" and right.chest_wall_side == "right"


def test_pectoral_muscle_on_mlo_only():
    corner = (slice(0, SHAPE[0] // 8), slice(0, SHAPE[1] // 12))
    for seed in range(6):
        mlo = generate_phantom(seed, view="MLO", laterality="L", shape=SHAPE)
        cc = generate_phantom(seed, view="CC", laterality="L", shape=SHAPE)
        max_value = 2 ** mlo.bits_stored - 1
        # MLO: the upper chest-wall corner is bright muscle; CC: background or thin tissue there
        assert mlo.image[corner].mean() > 0.5 * max_value
        assert cc.image[corner].mean() < mlo.image[corner].mean() - 0.15 * max_value


def test_choices_are_seeded_and_labels_balanced():
    phantoms = list(phantom_dataset(range(100, 160), shape=(96, 80)))
    labels = np.array([p.label for p in phantoms])
    assert 0.3 < labels.mean() < 0.7
    assert {p.finding for p in phantoms} == set(FINDINGS)
    assert {p.laterality for p in phantoms} == {"L", "R"} and {p.view for p in phantoms} == {"CC", "MLO"}
    assert len({p.density for p in phantoms}) >= 3


def test_phantom_dataset_matches_generate_and_spacing():
    seeds = [3, 9]
    got = list(phantom_dataset(seeds, shape=SHAPE, bits_stored=16))
    for seed, p in zip(seeds, got):
        assert np.array_equal(p.image, generate_phantom(seed, shape=SHAPE, bits_stored=16).image)
    assert generate_phantom(1).pixel_spacing_mm == pytest.approx(240.0 / 1024)
    assert generate_phantom(1).image.shape == (1024, 832)


def test_calcifications_survive_downsampling_to_model_input():
    from mammoxai.models.preprocess import preprocess_array

    for seed in range(4):
        p = generate_phantom(seed, finding="calcifications", shape=(1024, 832))
        x, geometry = preprocess_array(p.image, p.laterality, (256, 208))
        lesion = geometry.to_model(p.mask) > 0.5
        breast = geometry.to_model(breast_mask(p)) > 0.5
        # the brightest specks are clearly above the surrounding tissue at model resolution
        assert x[lesion].max() > np.percentile(x[breast & ~lesion], 99.5) + 0.15


@pytest.mark.parametrize("kwargs", [{"finding": "tumour"}, {"laterality": "B"}, {"view": "ML"},
                                    {"shape": (32, 32)}, {"bits_stored": 20}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError, match="generate_phantom"):
        generate_phantom(0, **kwargs)


def test_phantoms_module_does_not_import_torch():
    code = "import sys; import mammoxai.models.phantoms, mammoxai.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
