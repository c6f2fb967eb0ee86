import math

import numpy as np
import pytest

from physgen.data import CalorimeterGeometry, Layer, official_binning, read_binning_xml
from physgen.errors import GeometryError
from tests.conftest import REFERENCE


@pytest.mark.parametrize(
    "name, n_voxels, n_layers, relevant",
    [
        ("binning_dataset_1_photons.xml", 368, 24, 5),
        ("binning_dataset_1_pions.xml", 533, 24, 7),
        ("binning_dataset_2.xml", 6480, 45, 45),
        ("binning_dataset_3.xml", 40500, 45, 45),
    ],
)
def test_official_binnings_parse_to_the_published_voxel_counts(name, n_voxels, n_layers, relevant):
    path = REFERENCE / name
    if not path.exists():
        pytest.skip("reference XMLs not present")
    geo = read_binning_xml(path)
    assert geo.n_voxels == n_voxels
    assert geo.n_layers == n_layers
    assert len(geo.relevant_layers) == relevant
    # the copies shipped in the package are the same binnings
    assert official_binning(n_voxels) == geo


def test_xml_round_trip(tmp_path):
    geo = official_binning(368)
    p = tmp_path / "b.xml"
    p.write_text(geo.to_xml())
    assert read_binning_xml(p) == geo


def test_voxel_centres_follow_layer_angle_radius_order():
    # 2 angular bins (centres at -pi/2 and +pi/2) x 2 radial bins (centres 1 and 3 mm)
    geo = CalorimeterGeometry(layers=(Layer(r_edges=(0.0, 2.0, 4.0), n_alpha=2), Layer(r_edges=(0.0, 10.0), n_alpha=1)))
    x, y, r = geo.voxel_centres()
    np.testing.assert_allclose(r, [1, 3, 1, 3, 5])
    # the official XMLHandler: alpha centres on -pi..pi; one alpha bin -> alpha = 0 -> x = r
    np.testing.assert_allclose(x, [0, 0, 0, 0, 5], atol=1e-12)
    np.testing.assert_allclose(y, [-1, -3, 1, 3, 0], atol=1e-12)
    assert geo.layers_binned_in_alpha == [0]
    assert geo.layer_offsets == (0, 4, 5)
    np.testing.assert_array_equal(geo.layer_index(), [0, 0, 0, 0, 1])
    assert math.isclose(np.hypot(x, y)[:4].max(), 3.0)


def test_z_edges_must_match_layers():
    with pytest.raises(GeometryError, match="n_layers \\+ 1"):
        CalorimeterGeometry(layers=(Layer(r_edges=(0.0, 1.0)),), z_edges_mm=(0.0, 1.0, 2.0))
