"""ROOT through uproot on the real files of scikit-hep-testdata 0.3.0."""

import awkward as ak
import numpy as np
import torch
import uproot

from physgen.io import detect_format, iter_chunks, read, write

MUON = ["Muon_Px", "Muon_Py", "Muon_Pz", "Muon_E"]


def test_flat_cms_dimuon_branches(zmumu_path):
    d = read(zmumu_path, branches=["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"], units="GeV")
    assert detect_format(zmumu_path) == "root"
    assert d.x.shape == (2304, 8) and d.schema.feature_names[0] == "E1"
    truth = uproot.open(zmumu_path)["events"]["px2"].array(library="np")
    np.testing.assert_array_equal(d.x[:, 5].numpy(), truth.astype(np.float32))


def test_flat_round_trip_is_bit_exact_and_readable_by_uproot(tmp_path, zmumu_path):
    d = read(zmumu_path, branches=["E1", "px1", "M"], cond_branches=["Q1"])
    p = tmp_path / "z.root"
    write(d, p)
    back = read(p, branches=["E1", "px1", "M"], cond_branches=["Q1"])
    assert torch.equal(back.x, d.x) and torch.equal(back.cond, d.cond)
    t = uproot.open(p)["events"]
    assert t.classname == "TTree" and t.num_entries == 2304
    np.testing.assert_array_equal(t["M"].array(library="np"), d.x[:, 2].numpy())


def test_jagged_muons_pad_and_mask(hzz_path):
    d = read(hzz_path, branches=MUON)
    t = uproot.open(hzz_path)["events"]
    n_muon = t["NMuon"].array(library="np")
    assert d.x.shape == (2421, int(n_muon.max()), 4)
    np.testing.assert_array_equal(d.mask.sum(1).numpy(), n_muon)
    px = t["Muon_Px"].array()
    i = int(np.argmax(n_muon))
    np.testing.assert_array_equal(d.x[i, :, 0].numpy(), np.asarray(px[i], dtype=np.float32))
    assert float(d.x[~d.mask].abs().max()) == 0.0  # padding is zero


def test_jagged_max_length_clips_and_counts(hzz_path):
    d = read(hzz_path, branches=MUON, max_length=2)
    n_muon = uproot.open(hzz_path)["events"]["NMuon"].array(library="np")
    assert d.x.shape[1] == 2
    assert d.schema.meta["n_clipped"] == int((n_muon > 2).sum())


def test_jagged_round_trip_writes_a_collection(tmp_path, hzz_path):
    d = read(hzz_path, branches=MUON)
    p = tmp_path / "muons.root"
    write(d, p)
    t = uproot.open(p)["events"]
    assert "nMuon" in t.keys() and t["Muon_Px"].typename == "float[]"
    orig = uproot.open(hzz_path)["events"]["Muon_E"].array()
    assert ak.all(t["Muon_E"].array() == orig)
    back = read(p, branches=MUON)
    assert torch.equal(back.x, d.x) and torch.equal(back.mask, d.mask)


def test_root_streams_in_chunks(zmumu_path):
    parts = list(iter_chunks(zmumu_path, chunk_size=1000, branches=["E1", "E2"]))
    assert [len(p) for p in parts] == [1000, 1000, 304]


def test_showers_round_trip_as_one_array_branch(tmp_path, showers):
    """Showers are one float[768] branch beside incident_energy; physgen reads back the same Data, uproot the array."""
    d = showers[:300]
    p = tmp_path / "showers.root"
    write(d, p, format="root")
    f = uproot.open(p)
    t = f["events"]
    assert sorted(t.keys()) == ["incident_energy", "showers"] and t["showers"].typename == "float[768]"
    np.testing.assert_array_equal(t["showers"].array(library="np"), d.x.numpy())  # plain uproot: [N, 768]
    np.testing.assert_array_equal(t["incident_energy"].array(library="np"), d.cond[:, 0].numpy())
    back = read(p)
    assert back.schema.kind == "calorimeter" and back.geometry == d.geometry and back.schema.cond_names == d.schema.cond_names
    assert torch.equal(back.x, d.x) and torch.equal(back.cond, d.cond)
    # naming the branches reads the array as columns, as for any fixed-size array branch
    cols = read(p, branches=["showers"], cond_branches=["incident_energy"])
    assert cols.schema.feature_names[:2] == ("showers[0]", "showers[1]") and torch.equal(cols.x, d.x)


def test_columns_of_an_array_branch_are_written_back_as_one(tmp_path):
    from physgen.data import Data, Schema

    rng = np.random.default_rng(0)
    d = Data(rng.random((20, 4)).astype(np.float32), Schema(kind="event", feature_names=("p[0]", "p[1]", "p[2]", "E")))
    p = tmp_path / "p.root"
    write(d, p, format="root")
    t = uproot.open(p)["events"]
    assert t["p"].typename == "float[3]" and t["E"].typename == "float"
    back = read(p)
    assert back.schema.feature_names == d.schema.feature_names and torch.equal(back.x, d.x)


def test_rntuples_are_read_flat_arrays_and_lists(tmp_path):
    """uproot ≥ 5.7 writes a dict as an RNTuple: physgen reads its fields as it reads TTree branches."""
    p = tmp_path / "ntuple.root"
    e = np.arange(1, 6, dtype=np.float32)
    mom = np.arange(15, dtype=np.float32).reshape(5, 3)
    pt = ak.Array([[1.0, 2.0], [3.0], [], [4.0, 5.0, 6.0], [7.0]])
    with uproot.recreate(p) as f:
        f["ntuple"] = {"E": e, "p": mom, "pt": pt, "eta": pt / 10}
    assert uproot.open(p).classnames()["ntuple;1"] == "ROOT::RNTuple"
    flat = read(p)
    assert flat.schema.feature_names == ("E", "p[0]", "p[1]", "p[2]") and flat.schema.meta["rntuple"]
    np.testing.assert_array_equal(flat.x.numpy(), np.concatenate([e[:, None], mom], 1))
    lists = read(p, branches=["pt", "eta"], cond_branches=["E"])
    assert lists.x.shape == (5, 3, 2) and lists.mask.sum(1).tolist() == [2, 1, 0, 3, 1]
    np.testing.assert_array_equal(lists.x[3, :, 0].numpy(), [4.0, 5.0, 6.0])
    assert [len(c) for c in iter_chunks(p, chunk_size=2, branches=["E"])] == [2, 2, 1]
