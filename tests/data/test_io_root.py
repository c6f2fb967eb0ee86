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
