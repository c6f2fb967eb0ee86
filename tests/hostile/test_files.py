"""Hostile files, made here: corrupt compression and metadata, absurd declared sizes, tampered attributes, huge lists."""

from __future__ import annotations

import json
import random
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pytest
import uproot

import physgen
from physgen.errors import ConfigError, DataFileError, FileFormatError, InvalidDataError
from physgen.io import describe, read
from physgen.io._common import InvalidContentError
from tests.hostile.conftest import run_cli


def _corrupt(path: Path, start_fraction: float, n: int = 64, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    at = int(len(data) * start_fraction)
    for i in range(n):
        data[at + i] = rng.randrange(256)
    path.write_bytes(bytes(data))


@pytest.fixture
def corrupt_baskets(tmp_path) -> Path:
    """A ROOT file whose zlib-compressed baskets are overwritten in the middle: its directory still opens."""
    path = tmp_path / "corrupt.root"
    rng = np.random.default_rng(0)
    with uproot.recreate(path, compression=uproot.ZLIB(1)) as f:
        f.mktree("events", {"E": np.float32, "px": np.float32})
        for _ in range(4):
            f["events"].extend({"E": rng.normal(size=50_000).astype(np.float32), "px": rng.normal(size=50_000).astype(np.float32)})
    _corrupt(path, 0.02, n=4096)
    return path


def test_corrupt_root_baskets_are_a_format_error(corrupt_baskets, capsys, tmp_path):
    with pytest.raises(FileFormatError, match=r"corrupt.root.*cannot read the branches \(truncated or corrupt\?\)"):
        read(corrupt_baskets)
    run_cli(["info", corrupt_baskets], capsys, r"cannot read the branches")
    run_cli(["train", "gaussian", corrupt_baskets, "--out", tmp_path / "run"], capsys, r"cannot read the branches", absent=[tmp_path / "run" / "model"])


@pytest.fixture
def corrupt_metadata(tmp_path) -> Path:
    """An HDF5 file whose group heap (the datasets' names) is overwritten."""
    path = tmp_path / "corrupt.h5"
    with h5py.File(path, "w") as h5:
        g = h5.create_group("inner")
        for i in range(40):
            g[f"dataset_number_{i}"] = np.arange(10, dtype=np.float32)
        h5["showers"] = np.ones((5, 768), np.float32)
    data = bytearray(path.read_bytes())
    heap = data.find(b"HEAP")
    assert heap > 0
    for i in range(heap + 8, heap + 72):
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    return path


def test_corrupt_hdf5_metadata_is_a_format_error(corrupt_metadata, capsys):
    with pytest.raises(FileFormatError, match=r"corrupt.h5"):
        read(corrupt_metadata)
    run_cli(["info", corrupt_metadata], capsys, r"corrupt.h5")


def test_fixed_size_array_branches_become_columns():
    """scikit-hep-testdata's file of every branch type: flat, fixed-size arrays (bool[3], float[3], ...) and lists."""
    skhep = pytest.importorskip("skhep_testdata")
    path = skhep.data_path("uproot-sample-6.10.05-uncompressed.root")
    data = read(path)
    names = data.schema.feature_names
    assert data.x.shape == (30, 45) and names[:5] == ("n", "b", "ab[0]", "ab[1]", "ab[2]")
    direct = uproot.open(path)["sample"]["af8"].array(library="np")
    np.testing.assert_allclose(data.x[:, [names.index(f"af8[{i}]") for i in range(3)]].numpy(), direct.astype(np.float32))
    jagged = read(path, branches=["Af8"])
    assert jagged.mask is not None and jagged.x.shape[2] == 1


@pytest.fixture
def huge_list(tmp_path) -> Path:
    """2,000 events, one of which holds a list of two million entries."""
    path = tmp_path / "huge_list.root"
    import awkward as ak

    lengths = np.ones(2000, dtype=np.int64)
    lengths[7] = 2_000_000
    values = np.zeros(int(lengths.sum()), dtype=np.float32)
    hits = ak.zip({"E": ak.unflatten(values, lengths)})
    with uproot.recreate(path) as f:
        f.mktree("events", {"Hit": hits.type.content})
        f["events"].extend({"Hit": hits})
    return path


def test_a_huge_list_asks_for_max_length_instead_of_padding_everything(huge_list, capsys):
    with pytest.raises(InvalidDataError, match=r"longest list has 2,000,000 entries: padding every event to it would take 14.9 GiB; pass max_length="):
        read(huge_list, branches=["Hit_E"])
    clipped = read(huge_list, branches=["Hit_E"], max_length=5)
    assert clipped.x.shape == (2000, 5, 1) and clipped.schema.meta["n_clipped"] == 1
    run_cli(["info", huge_list, "--branches", "Hit_E"], capsys, r"pass max_length=")


@pytest.fixture
def absurd_declared(tmp_path) -> Path:
    """A CaloChallenge file declaring a billion showers (3 TB) that holds none: its chunks are never written."""
    path = tmp_path / "declared.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("showers", shape=(10**9, 768), dtype=np.float32, chunks=(1000, 768))
        h5.create_dataset("incident_energies", shape=(10**9, 1), dtype=np.float32, chunks=(100_000, 1), fillvalue=1000.0)
    assert path.stat().st_size < 10**6
    return path


def test_a_file_declaring_terabytes_is_described_from_its_metadata_and_not_read_whole(absurd_declared, capsys):
    summary = describe(absurd_declared)
    assert summary["n_events"] == 10**9 and summary["summarised_events"] == 2000
    assert main_info(absurd_declared, capsys).startswith(str(absurd_declared))
    with pytest.raises(DataFileError, match=r"reading it whole needs 2861.0 GiB.*physgen.io.iter_chunks"):
        read(absurd_declared)
    assert len(read(absurd_declared, stop=50)) == 50


def main_info(path: Path, capsys) -> str:
    from physgen.cli import main

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "events     1000000000 (summary of the first 2,000)" in out
    return out


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"physgen_schema": "not json at all"}, r"physgen_schema attribute is not valid"),
        ({"physgen_schema": json.dumps({"geometry": {"layers": "nope"}})}, r"physgen_schema attribute is not valid"),
        ({"aux": {"r_edges_mm": [0.0, 5.0], "n_alpha": 0}}, r"binning attributes .* are not valid"),
        ({"aux": {"r_edges_mm": "abc", "n_alpha": 4}}, r"binning attributes .* are not valid"),
    ],
)
def test_tampered_attributes_are_format_errors(tmp_path, attrs, message):
    path = tmp_path / "tampered.h5"
    with h5py.File(path, "w") as h5:
        h5["showers"] = np.ones((4, 768), np.float32)
        h5["incident_energies"] = np.full((4, 1), 1000.0, np.float32)
        for k, v in attrs.items():
            if k == "aux":
                g = h5.create_group("aux")
                for a, b in v.items():
                    g.attrs[a] = b
            else:
                h5.attrs[k] = v
    with pytest.raises(FileFormatError, match=message):
        read(path)


def test_a_range_with_no_events_is_an_error_not_a_stop_iteration(tmp_path):
    physgen.write(physgen.load_default()[:10], tmp_path / "ten.h5")
    with pytest.raises(InvalidDataError, match=r"no events in start:stop = 20:10"):
        read(tmp_path / "ten.h5", start=20)


def test_options_for_another_format_name_the_valid_ones(tmp_path, zmumu_path):
    physgen.write(physgen.load_default()[:10], tmp_path / "ten.h5")
    with pytest.raises(ConfigError, match=r"as calochallenge: unknown option 'branches'.*valid: binning, start, stop") as info:
        read(tmp_path / "ten.h5", branches=["E1"])
    assert str(info.value).count("ten.h5") == 1  # the file named once, not once per wrapping
    with pytest.raises(ConfigError, match=r"as root: unknown option 'x_key'"):
        read(zmumu_path, x_key="E1")


def test_an_rntuple_field_physgen_cannot_use_is_named(tmp_path):
    path = tmp_path / "ntuple.root"
    with uproot.recreate(path) as f:
        f["ntuple"] = {"muon": ak.zip({"pt": ak.Array([[1.0], [2.0, 3.0]]), "eta": ak.Array([[0.1], [0.2, 0.3]])}), "E": np.arange(2.0)}
    with pytest.raises(InvalidContentError, match=r"key 'muon'.*expected a numeric RNTuple field"):
        read(path, branches=["muon"])
    assert read(path).schema.feature_names == ("E",)  # the default takes the flat numeric fields


def test_a_file_with_several_trees_or_none_says_so(tmp_path):
    path = tmp_path / "two.root"
    with uproot.recreate(path) as f:
        f["nt"] = {"a": np.arange(3.0)}
        f.mktree("tt", {"b": np.float64})
        f["tt"].extend({"b": np.arange(3.0)})
        f["note"] = "a string"
    with pytest.raises(DataFileError, match=r"holds 2 trees \(nt, tt\); name one with tree="):
        read(path)
    empty = tmp_path / "strings.root"
    with uproot.recreate(empty) as f:
        f["note"] = "only a string"
    with pytest.raises(FileFormatError, match=r"holds no TTree or RNTuple \(objects: note \(TObjString\)\)"):
        read(empty)
