"""Production generation: streamed chunks, appending writers, pass-through columns, units and ranges, Dask."""

from __future__ import annotations

import sys
import warnings

import h5py
import numpy as np
import pytest
import torch
import uproot

import physgen
from physgen.calorimeter import ShowerModel
from physgen.data import Data, Schema
from physgen.errors import (
    ConditionRangeWarning,
    ConfigError,
    InvalidDataError,
    MissingKeyError,
    UnknownNameError,
)
from physgen.generate import generate
from physgen.io import open_writer, output_format
from physgen.io.stream import iter_columns
from physgen.surrogates import chunk_seed, create
from physgen.training.devices import autocast_dtype
from physgen.units import convert, parse_quantity, to_unit


@pytest.fixture(scope="module")
def model(showers):
    """A Gaussian shower model of the embedded PbWO4 showers (incident energies 1–100 GeV, in MeV)."""
    m = ShowerModel("gaussian")
    m.fit(showers)
    return m


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("gen") / "model"
    model.save(d)
    return d


@pytest.fixture(scope="module")
def cond_root(tmp_path_factory):
    """An analysis's event file: event numbers (int64) and generated energies in GeV, in a tree called ``Events``."""
    path = tmp_path_factory.mktemp("cond") / "events.root"
    rng = np.random.default_rng(3)
    with uproot.recreate(path) as f:
        f["Events"] = {"event": np.arange(10**12, 10**12 + 2500, dtype=np.int64),
                       "E_gen": np.exp(rng.uniform(np.log(2.0), np.log(80.0), 2500)).astype(np.float32)}
    return path


# -- units -------------------------------------------------------------------------------------
def test_units_convert_as_the_closed_forms_say():
    assert to_unit("5 GeV", "MeV") == 5000.0 and to_unit("250keV", "MeV") == 0.25 and to_unit(7, "MeV") == 7.0
    assert convert(180.0, "deg", "rad") == pytest.approx(np.pi) and convert(2.5, "cm", "mm") == 25.0
    assert parse_quantity("-1.5e-3 rad") == (-1.5e-3, "rad") and parse_quantity("42") == (42.0, None)
    with pytest.raises(ConfigError, match="cannot convert 5.0 GeV .an energy. to rad"):
        to_unit("5 GeV", "rad")
    with pytest.raises(UnknownNameError, match="Did you mean 'GeV'"):
        to_unit("5 Gev", "MeV")
    with pytest.raises(ConfigError, match="expected a number with an optional unit"):
        parse_quantity("five GeV")


def test_quantities_sample_like_numbers_in_the_models_unit(model):
    a = model.sample(["10 GeV", "0.05 TeV"], seed=1)
    b = model.sample(torch.tensor([[10_000.0], [50_000.0]]), seed=1)
    assert torch.equal(a.cond, b.cond) and torch.equal(a.x, b.x)


# -- ranges ------------------------------------------------------------------------------------
def test_conditions_outside_the_training_range_warn_and_strict_refuses(model, showers):
    lo, hi = showers.cond.min().item(), showers.cond.max().item()
    assert model.cond_range == [[lo, hi]]
    with pytest.warns(ConditionRangeWarning, match=r"outside the range .* trained on, .*MeV \(first: 5 MeV\); did you mean 5 GeV"):
        model.sample([[5.0]], seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.sample([["5 GeV"], [lo * 0.97]], seed=0)  # inside, and within 5 % of the lowest training energy
    with pytest.warns(ConditionRangeWarning, match="1 of 1 values"):
        model.sample([[lo * 0.9]], seed=0)
    with pytest.raises(InvalidDataError, match=r"outside the range .*\(strict\)"):
        model.sample([[5.0]], seed=0, strict=True)
    with pytest.raises(InvalidDataError, match=r"condition 'incident_energy' is an energy \(MeV\) and must be > 0; row 1 holds -3"):
        model.sample([[5000.0], [-3.0]], seed=0)


def test_the_training_range_survives_save_and_load(model, model_dir):
    loaded = physgen.surrogates.load(model_dir)
    assert loaded.cond_range == model.cond_range
    with pytest.warns(ConditionRangeWarning):
        loaded.sample([[5.0]], seed=0)


def test_a_signed_second_condition_is_modelled_and_written(showers, tmp_path):
    """An angle beside the energy: not logged (it may be negative), kept through sampling and HDF5."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(-0.3, 0.3, len(showers)).astype(np.float32)
    schema = Schema(kind="calorimeter", units="MeV", cond_names=("incident_energy", "theta"), cond_units=("MeV", "rad"),
                    geometry=showers.geometry, source_format="calochallenge")
    data = Data(showers.x, schema, cond=torch.cat([showers.cond, torch.from_numpy(theta)[:, None]], 1))
    m = ShowerModel("gaussian")
    m.fit(data)
    out = m.sample([["20 GeV", "-10 deg"], ["20 GeV", "0.1 rad"]], seed=0)
    assert out.cond[:, 1].tolist() == pytest.approx([-np.pi / 18, 0.1])
    path = physgen.write(out, tmp_path / "two.h5")
    with h5py.File(path) as h5:
        assert h5["incident_energies"][:, 0].tolist() == [20_000.0, 20_000.0]
        assert h5["conditions"].shape == (2, 2)
    back = physgen.read(path)
    assert back.schema.cond_names == ("incident_energy", "theta") and torch.allclose(back.cond, out.cond)


# -- streaming -----------------------------------------------------------------------------------
def test_iter_sample_draws_chunk_i_with_the_chunk_seed(model):
    cond = torch.full((2500, 1), 30_000.0)
    chunks = list(model.iter_sample(cond, chunk_size=1000, seed=9))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert torch.equal(chunks[1].x, model.sample(cond[1000:2000], seed=chunk_seed(9, 1)).x)
    assert not torch.equal(chunks[0].x, chunks[1].x)
    with pytest.raises(InvalidDataError, match="chunk_size must be a whole number ≥ 1; got 0"):
        next(model.iter_sample(cond, chunk_size=0))


def test_a_stream_warns_once_per_condition_however_many_chunks_stray(model, tmp_path):
    energies = [f"{e} MeV" for e in (5, 6, 7, 8)]  # every chunk strays, each with another first value
    with pytest.warns(ConditionRangeWarning) as caught:
        result = generate(model, tmp_path / "x.h5", energies=energies, n=8, chunk_size=1)
    assert len(caught) == 1 and len(result.warnings) == 1 and result.warnings[0].startswith("chunk 0: 1 of 1 values")


def test_streamed_file_equals_the_chunks_and_carries_event_ids(model, cond_root, tmp_path):
    out = tmp_path / "showers.root"
    result = generate(model, out, cond_file=cond_root, columns=["E_gen"], cond_units=["GeV"], keep=["event"], chunk_size=1000, seed=4)
    assert (result.rows, result.chunks, result.format) == (2500, 3, "root")
    tree = uproot.open(out)["Events"]  # the input tree's name
    events = uproot.open(cond_root)["Events"].arrays(library="np")
    got = tree.arrays(["event", "incident_energy", "showers"], library="np")
    assert got["event"].dtype == np.int64 and np.array_equal(got["event"], events["event"])
    assert np.allclose(got["incident_energy"], events["E_gen"].astype(np.float64) * 1000, rtol=1e-6)
    expect = model.sample(torch.from_numpy(events["E_gen"][1000:2000, None] * 1000.0).float(), seed=chunk_seed(4, 1))
    assert np.array_equal(got["showers"][1000:2000], expect.x.numpy())
    back = physgen.read(out)  # physgen reads its own output back as showers
    assert back.x.shape == (2500, 768) and back.schema.geometry == model.schema.geometry


def test_hdf5_output_follows_the_suffix_and_keeps_ids(model, cond_root, tmp_path):
    out = tmp_path / "showers.h5"
    generate(model, out, cond_file=cond_root, columns=["E_gen"], cond_units=["GeV"], keep=["event"], chunk_size=700)
    with h5py.File(out) as h5:
        assert h5["showers"].dtype == np.float64 and h5["showers"].shape == (2500, 768) and h5["showers"].compression == "gzip"
        assert h5["showers"].maxshape == (None, 768) and h5["event"][()].tolist()[:2] == [10**12, 10**12 + 1]
    assert physgen.io.detect_format(out) == "calochallenge"


def test_unconditional_events_stream_to_root_in_the_training_trees_name(zmumu_path, tmp_path):
    g = create("gaussian")
    g.fit(physgen.read(zmumu_path, branches=["E1", "px1"], units="GeV"))
    out = tmp_path / "z.root"
    generate(g, out, n=2304 + 10, chunk_size=1000, seed=0)
    tree_name = physgen.read(zmumu_path, branches=["E1"]).schema.meta["tree"]
    assert uproot.open(out)[tree_name].num_entries == 2314


# -- formats and writers -----------------------------------------------------------------------
def test_the_suffix_decides_the_format(model, zmumu_path, tmp_path):
    events = physgen.read(zmumu_path, branches=["E1", "px1"])  # read from ROOT
    assert output_format(tmp_path / "x.h5", events.schema) == "hdf5"  # not ROOT bytes in a .h5
    assert output_format(tmp_path / "x.root", model.schema) == "root"
    assert output_format(tmp_path / "x.hdf5", model.schema) == "calochallenge"
    assert output_format(tmp_path / "x.out", events.schema) == "root"  # an uninformative suffix: the data's own format
    physgen.write(events, tmp_path / "x.h5")
    assert physgen.io.detect_format(tmp_path / "x.h5") == "hdf5"
    with pytest.raises(ConfigError, match=r"ends in '.h5', a HDF5 file, but the format asked for is 'root'"):
        output_format(tmp_path / "x.h5", model.schema, "root")
    with pytest.raises(ConfigError, match="text files .* hold spin samples"):
        output_format(tmp_path / "x.txt", model.schema)


def test_a_failed_stream_leaves_nothing_and_keeps_an_old_file(model, tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), open_writer(out, model.schema) as w:
        w.append(model.sample([[5000.0]] * 10, seed=0))
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]
    with pytest.raises(InvalidDataError, match="no events were written"), open_writer(tmp_path / "y.h5", model.schema):
        pass
    assert not (tmp_path / "y.h5").exists()


# -- bad input ---------------------------------------------------------------------------------
def test_bad_generation_input_is_a_typed_error_with_nothing_written(model, cond_root, tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(MissingKeyError, match=r"events.root.*E_true.*E_gen"):
        generate(model, out, cond_file=cond_root, columns=["E_true"])
    with pytest.raises(MissingKeyError, match="incident_energy"):  # the model's own condition name is not in the file
        generate(model, out, cond_file=cond_root)
    with pytest.raises(InvalidDataError, match="chunk_size must be a whole number ≥ 1; got 0"):
        generate(model, out, energies=[5000.0], chunk_size=0)
    with pytest.raises(InvalidDataError, match="model must be a fitted surrogate, .* got int"):
        generate(3, out, energies=[5000.0])
    with pytest.raises(InvalidDataError, match="workers must be a whole number ≥ 1; got 0"):
        generate(model, out, energies=[5000.0], workers=0)
    with pytest.raises(InvalidDataError, match=r"conditions must be \[B, 1\].*got shape \(3, 2\)"):
        generate(model, out, cond=np.ones((3, 2)) * 5000)
    with pytest.raises(InvalidDataError, match="conditions must be finite; row 1"):
        generate(model, out, cond=[[5000.0], [float("nan")]])
    bad = tmp_path / "nan.h5"
    with h5py.File(bad, "w") as h5:
        h5["E"] = np.array([5000.0, np.nan])
    with pytest.raises(physgen.io.InvalidContentError, match="nan.h5.*'E'.*expected finite values"):
        generate(model, out, cond_file=bad, columns=["E"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.h5"]


def test_iter_columns_refuses_list_branches(hzz_path):
    with pytest.raises(physgen.io.InvalidContentError, match="expected one number per event"):
        next(iter_columns(hzz_path, ["Muon_Px"]))


# -- precision ---------------------------------------------------------------------------------
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it(monkeypatch):
    from physgen.training import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert autocast_dtype("auto", torch.device("cpu")) is None
    with pytest.warns(RuntimeWarning, match="without AVX512-BF16/AMX"):
        assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert autocast_dtype("auto", torch.device("cpu")) is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autocast_dtype("bf16", torch.device("cpu"))


# -- Dask --------------------------------------------------------------------------------------
def test_dask_output_is_identical_for_one_and_two_workers_and_resumes(model, model_dir, cond_root, tmp_path):
    pytest.importorskip("distributed")
    from physgen.distributed import Chunk, shard_directory, shard_task
    from physgen.generate import _job_key

    common = {"cond_file": cond_root, "columns": ["E_gen"], "cond_units": ["GeV"], "keep": ["event"], "chunk_size": 600, "seed": 11}
    one = generate(model_dir, tmp_path / "one.h5", workers=1, **common)
    two = generate(model_dir, tmp_path / "two.h5", workers=2, **common)
    assert (one.workers, two.workers, one.chunks) == (1, 2, 5)
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert all(np.array_equal(a[k][()], b[k][()]) for k in ("showers", "incident_energies", "event"))
        ids = a["event"][()]
    assert np.array_equal(ids, np.arange(10**12, 10**12 + 2500))
    assert not shard_directory(tmp_path / "one.h5").exists()
    # a killed run left chunk 2's shard: the re-run keeps it and gives the same file
    out = tmp_path / "resumed.h5"
    parts = shard_directory(out)
    parts.mkdir()
    options = {"batch_size": 10_000, "precision": None, "strict": False}
    job = _job_key(model, model_dir, 2500, 600, 11, options, cond=None, energies=None, cond_file=cond_root, columns=["E_gen"],
                   keep=["event"], cond_units=["GeV"], tree=None, n=None)
    (parts / "job.json").write_text(f'{{"job": "{job}"}}')
    rows = next(c for i, c in enumerate(iter_columns(cond_root, ["E_gen", "event"], chunk_size=600)) if i == 2)
    shard_task(str(model_dir), Chunk(2, rows["E_gen"][:, None].astype(np.float64) * 1000, 600, {"event": rows["event"]}), 11, options,
               str(parts / "part-000002.h5"), 1)
    resumed = generate(model_dir, out, workers=2, **common)
    assert resumed.resumed == 1
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(out) as b:
        assert np.array_equal(a["showers"][()], b["showers"][()])


def test_dask_bad_scheduler_and_missing_extra(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    out = tmp_path / "x.h5"
    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'"):
        generate(model_dir, out, energies=[5000.0], scheduler="tcp://127.0.0.1:1")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ConfigError, match=r"pip install 'physgen\[dask\]'"):
        generate(model_dir, out, energies=[5000.0], workers=2)
    assert list(tmp_path.iterdir()) == []
