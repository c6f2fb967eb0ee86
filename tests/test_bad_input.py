"""A corpus of malformed inputs, made here, each with the typed error and the message it must give.

Every file error names the file; key errors name the key and the closest valid keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import uproot

from physgen.data import read_binning_xml
from physgen.errors import (
    DataFileError,
    FileFormatError,
    GeometryError,
    InvalidDataError,
    MissingKeyError,
    PhysgenError,
)
from physgen.io import InvalidContentError, read, write


def _calo(path: Path, showers=None, energies=None, **extra) -> None:
    showers = np.ones((4, 768), np.float32) if showers is None else showers
    energies = np.full((4, 1), 1000.0, np.float32) if energies is None else energies
    with h5py.File(path, "w") as h5:
        if showers is not False:
            h5["showers"] = showers
        if energies is not False:
            h5["incident_energies"] = energies
        for k, v in extra.items():
            h5[k] = v


def _xml(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def _root(path: Path, **branches) -> None:
    with uproot.recreate(path) as f:
        f.mktree("events", {k: v.dtype for k, v in branches.items()})
        f["events"].extend(branches)


def _text(p: Path) -> Path:
    (p / "notes.h5").write_text("this is not HDF5\n")
    return p / "notes.h5"


def _empty(p: Path) -> Path:
    (p / "empty.h5").write_bytes(b"")
    return p / "empty.h5"


def _truncated_hdf5(p: Path) -> Path:
    _calo(p / "full.h5", showers=np.random.default_rng(0).random((2000, 768), dtype=np.float32))
    data = (p / "full.h5").read_bytes()
    (p / "cut.h5").write_bytes(data[: len(data) // 3])
    return p / "cut.h5"


def _truncated_root(p: Path) -> Path:
    _root(p / "full.root", E=np.arange(50000, dtype=np.float32))
    data = (p / "full.root").read_bytes()
    (p / "cut.root").write_bytes(data[: len(data) // 2])
    return p / "cut.root"


def _no_datasets(p: Path) -> Path:
    with h5py.File(p / "hollow.h5", "w") as h5:
        h5.create_group("nothing")
    return p / "hollow.h5"


def _missing_showers(p: Path) -> Path:
    _calo(p / "a.h5", showers=False)
    return p / "a.h5"


def _misspelled_showers(p: Path) -> Path:
    with h5py.File(p / "b.h5", "w") as h5:
        h5["incident_energies"] = np.ones((4, 1), np.float32)
        h5["shower"] = np.ones((4, 768), np.float32)
    return p / "b.h5"


def _wrong_voxel_count(p: Path) -> Path:
    _calo(p / "c.h5", showers=np.ones((4, 700), np.float32))
    return p / "c.h5"


def _nan_shower(p: Path) -> Path:
    s = np.ones((4, 768), np.float32)
    s[2, 100] = np.nan
    _calo(p / "d.h5", showers=s)
    return p / "d.h5"


def _inf_energy(p: Path) -> Path:
    e = np.full((4, 1), 1000.0, np.float32)
    e[1] = np.inf
    _calo(p / "e.h5", energies=e)
    return p / "e.h5"


def _negative_voxel(p: Path) -> Path:
    s = np.ones((4, 768), np.float32)
    s[3, 5] = -2.5
    _calo(p / "f.h5", showers=s)
    return p / "f.h5"


def _zero_energy(p: Path) -> Path:
    _calo(p / "g.h5", energies=np.zeros((4, 1), np.float32))
    return p / "g.h5"


def _row_mismatch(p: Path) -> Path:
    _calo(p / "h.h5", energies=np.ones((5, 1), np.float32))
    return p / "h.h5"


def _no_events(p: Path) -> Path:
    _calo(p / "i.h5", showers=np.ones((0, 768), np.float32), energies=np.ones((0, 1), np.float32))
    return p / "i.h5"


def _string_showers(p: Path) -> Path:
    with h5py.File(p / "j.h5", "w") as h5:
        h5["incident_energies"] = np.ones((2, 1), np.float32)
        h5["showers"] = np.array([b"a" * 768, b"b" * 768])
    return p / "j.h5"


def _calogan_missing_layer(p: Path) -> Path:
    with h5py.File(p / "k.h5", "w") as h5:
        h5["layer_0"] = np.ones((3, 3, 96), np.float32)
        h5["layer_1"] = np.ones((3, 12, 12), np.float32)
        h5["energy"] = np.ones((3, 1), np.float32)
    return p / "k.h5"


def _calogan_ragged(p: Path) -> Path:
    with h5py.File(p / "l.h5", "w") as h5:
        h5["layer_0"] = np.ones((3, 3, 96), np.float32)
        h5["layer_1"] = np.ones((2, 12, 12), np.float32)
        h5["layer_2"] = np.ones((3, 12, 6), np.float32)
        h5["energy"] = np.ones((3, 1), np.float32)
    return p / "l.h5"


def _generic_unnamed(p: Path) -> Path:
    with h5py.File(p / "m.h5", "w") as h5:
        h5["jets"] = np.ones((3, 4), np.float32)
    return p / "m.h5"


def _root_plain(p: Path) -> Path:
    _root(p / "n.root", Muon_Px=np.ones(3, np.float32), Muon_Py=np.ones(3, np.float32))
    return p / "n.root"


def _binning_not_xml(p: Path) -> Path:
    return _xml(p / "o.xml", "Bins: layer 0 r_edges 0,1,2")


def _binning_no_edges(p: Path) -> Path:
    return _xml(p / "q.xml", '<Bins><Bin name="photon"><Layer id="0" n_bin_alpha="1"/></Bin></Bins>')


def _binning_bad_numbers(p: Path) -> Path:
    return _xml(p / "r.xml", '<Bins><Bin name="photon"><Layer id="0" r_edges="0,five,10" n_bin_alpha="1"/></Bin></Bins>')


def _binning_decreasing(p: Path) -> Path:
    return _xml(p / "s.xml", '<Bins><Bin name="photon"><Layer id="0" r_edges="0,10,5" n_bin_alpha="1"/></Bin></Bins>')


def _spins_bad_digit(p: Path) -> Path:
    (p / "t.txt").write_text("0101\n0121\n")
    return p / "t.txt"


def _spins_ragged(p: Path) -> Path:
    (p / "u.txt").write_text("0101\n011\n")
    return p / "u.txt"


def _directory(p: Path) -> Path:
    (p / "adir.h5").mkdir()
    return p / "adir.h5"


# (make the input, how to read it, expected error type, message pattern)
CORPUS: dict[str, tuple[Callable[[Path], Path], dict, type, str]] = {
    "text file named .h5": (_text, {}, FileFormatError, "neither HDF5 nor ROOT"),
    "empty file": (_empty, {}, FileFormatError, "empty \\(0 bytes\\)"),
    "truncated HDF5": (_truncated_hdf5, {}, FileFormatError, "truncated or corrupt"),
    "truncated ROOT": (_truncated_root, {}, FileFormatError, "truncated or corrupt"),
    "HDF5 without datasets": (_no_datasets, {}, FileFormatError, "holds no datasets"),
    "missing showers": (_missing_showers, {}, MissingKeyError, "no dataset 'showers'.*available: 'incident_energies'"),
    "misspelled showers": (_misspelled_showers, {}, MissingKeyError, "did you mean 'shower'"),
    "voxels contradict binning": (_wrong_voxel_count, {"binning": "PBWO4_XML"}, GeometryError, "700 voxels but the binning describes 768"),
    "NaN voxel": (_nan_shower, {}, InvalidContentError, "'showers'.*NaN/inf, first at index \\(2, 100\\)"),
    "infinite energy": (_inf_energy, {}, InvalidContentError, "'incident_energies'.*NaN/inf"),
    "negative voxel": (_negative_voxel, {}, InvalidContentError, "'showers'.*negative.*-2.5 at index \\(3, 5\\)"),
    "zero incident energy": (_zero_energy, {}, InvalidContentError, "'incident_energies'.*> 0"),
    "row counts disagree": (_row_mismatch, {}, InvalidContentError, "'incident_energies'.*\\(4, 1\\)"),
    "no events": (_no_events, {}, InvalidContentError, "no events \\(0 rows\\)"),
    "non-numeric showers": (_string_showers, {}, InvalidContentError, "numeric"),
    "CaloGAN missing layer_2": (_calogan_missing_layer, {}, MissingKeyError, "'layer_2'"),
    "CaloGAN ragged rows": (_calogan_ragged, {}, InvalidContentError, "'layer_1'.*N=3"),
    "generic HDF5 without x_key": (_generic_unnamed, {}, FileFormatError, "x_key=.*jets"),
    "generic HDF5 wrong x_key": (_generic_unnamed, {"x_key": "jet"}, MissingKeyError, "did you mean 'jets'"),
    "ROOT tree missing": (_root_plain, {"tree": "Events"}, MissingKeyError, "no TTree or RNTuple 'Events'.*'events'"),
    "ROOT branch missing": (_root_plain, {"branches": ["Muon_PX"]}, MissingKeyError, "no branch 'Muon_PX'.*'Muon_Px'"),
    "ROOT max_length < 1": (_root_plain, {"max_length": 0}, InvalidDataError, "max_length must be ≥ 1"),
    "binning not XML": (_binning_not_xml, {"xml": True}, GeometryError, "not a valid binning XML"),
    "binning without r_edges": (_binning_no_edges, {"xml": True}, GeometryError, "Layer id=0.*'r_edges' is missing"),
    "binning with words": (_binning_bad_numbers, {"xml": True}, GeometryError, "comma-separated numbers"),
    "binning decreasing": (_binning_decreasing, {"xml": True}, GeometryError, "must increase"),
    "spins with a 2": (_spins_bad_digit, {}, FileFormatError, "neither HDF5 nor ROOT nor 0/1"),
    "spins ragged rows": (_spins_ragged, {}, InvalidContentError, "line 2.*expected 4 spins"),
    "a directory": (_directory, {}, DataFileError, "is a directory"),
    "a missing file": (lambda p: p / "nope.h5", {}, DataFileError, "no such file"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_input(tmp_path, case):
    make, kwargs, error, pattern = CORPUS[case]
    path = make(tmp_path)
    kwargs = dict(kwargs)
    with pytest.raises(error, match=pattern) as info:
        if kwargs.pop("xml", False):
            read_binning_xml(path)
        else:
            if kwargs.get("binning") == "PBWO4_XML":
                from physgen.data import default_path

                kwargs["binning"] = default_path().parent / "binning_pbwo4_gamma.xml"
            read(path, **kwargs)
    assert isinstance(info.value, PhysgenError)
    # every error about a file names that file
    if isinstance(info.value, DataFileError):
        assert str(path) in str(info.value) or path.name in str(info.value)


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20


def _fail_on_call(real, n_ok: int):
    """Wrap ``real`` so that call number ``n_ok + 1`` raises a simulated disk-full error."""
    state = {"n": 0}

    def wrapper(*args, **kwargs):
        state["n"] += 1
        if state["n"] > n_ok:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    return wrapper


def test_failed_hdf5_write_leaves_no_file(tmp_path, showers, monkeypatch):
    target = tmp_path / "out.h5"
    # fail after the first dataset has been written
    monkeypatch.setattr(h5py.Group, "create_dataset", _fail_on_call(h5py.Group.create_dataset, 1))
    with pytest.raises(OSError, match="disk full"):
        write(showers, target)
    assert os.listdir(tmp_path) == []


def test_failed_root_write_keeps_the_old_file(tmp_path, zmumu_path, monkeypatch):
    target = tmp_path / "keep.root"
    d = read(zmumu_path, branches=["E1"])
    write(d, target)
    before = target.read_bytes()
    # the tree is created, then filling it fails
    monkeypatch.setattr(uproot.writing.WritableTree, "extend", _fail_on_call(uproot.writing.WritableTree.extend, 0))
    with pytest.raises(OSError, match="disk full"):
        write(d, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.root"]
