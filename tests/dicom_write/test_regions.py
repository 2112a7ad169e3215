"""Hot regions: threshold -> components -> closed polygons in stored-pixel SCOORD coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import points_in_poly

from mammoxai.dicom_io.regions import find_hot_regions


def test_square_region_polygon_follows_pixel_edges():
    hm = np.zeros((40, 60), np.float32)
    hm[10:20, 30:45] = 1.0                        # rows 10..19, columns 30..44
    (region,) = find_hot_regions(hm, threshold=0.5)
    poly = region.polygon
    assert np.array_equal(poly[0], poly[-1]) and len(poly) >= 4
    # SCOORD: x = column, y = row, origin at the top-left corner of the top-left pixel;
    # the contour runs through the half-way points between the pixel centres inside and outside.
    assert poly[:, 0].min() == pytest.approx(30.0, abs=0.6) and poly[:, 0].max() == pytest.approx(45.0, abs=0.6)
    assert poly[:, 1].min() == pytest.approx(10.0, abs=0.6) and poly[:, 1].max() == pytest.approx(20.0, abs=0.6)
    assert region.area_px == 150 and region.peak == 1.0 and region.mass_fraction == pytest.approx(1.0)
    assert region.centroid == pytest.approx((37.5, 15.0))


def test_regions_ranked_by_mass_and_limited(dw):
    gaussian = dw.gaussian
    shape = (1200, 900)                            # > WORK_SIZE: searched on a block-averaged grid
    hm = gaussian(shape, (300, 300), 40) + 0.8 * gaussian(shape, (900, 600), 60) + 0.7 * gaussian(shape, (300, 700), 10)
    regions = find_hot_regions(hm, threshold=0.5, max_regions=2)
    assert len(regions) == 2
    assert regions[0].mass_fraction >= regions[1].mass_fraction
    centres = [(300, 300), (900, 600)]            # (row, column) of the two biggest blobs
    for region, (r, c) in zip(regions, sorted(centres, key=lambda rc: -1 if rc == (900, 600) else 0)):
        assert points_in_poly([[c, r]], region.polygon)[0]
        assert 0 <= region.polygon[:, 0].min() and region.polygon[:, 0].max() <= shape[1]
        assert 0 <= region.polygon[:, 1].min() and region.polygon[:, 1].max() <= shape[0]
    assert len(find_hot_regions(hm, threshold=0.5, max_regions=5)) == 3


def test_signed_map_uses_positive_part_and_empty_maps_give_nothing(dw):
    gaussian = dw.gaussian
    hm = -gaussian((100, 100), (50, 50), 10)
    assert find_hot_regions(hm) == []
    hm[10:14, 10:14] = 0.5
    (region,) = find_hot_regions(hm)
    assert points_in_poly([[12, 12]], region.polygon)[0]
    assert find_hot_regions(np.zeros((10, 10), np.float32)) == []
    assert find_hot_regions(np.full((10, 10), np.nan, np.float32)) == []


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.0}, {"max_regions": 0}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        find_hot_regions(np.ones((10, 10), np.float32), **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        find_hot_regions(np.ones(10, np.float32))
