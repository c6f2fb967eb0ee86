"""CaloGAN HDF5 (Paganini et al. 2018): ``layer_0`` (N, 3, 96), ``layer_1`` (N, 12, 12),
``layer_2`` (N, 12, 6) cell energies in MeV and ``energy`` (N, 1) incident energy in GeV.

physgen flattens the three layers, row-major, into ``x`` [N, 504] and keeps the
incident energy in MeV in ``cond`` (so all calorimeter data share units);
the writer converts back to GeV. The optional ``overflow`` (N, 3) goes to ``aux``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from physgen.data.container import Data, Schema
from physgen.data.geometry import CalorimeterGeometry, Layer
from physgen.errors import InvalidDataError
from physgen.io._common import InvalidContentError, check_values, chunk_bounds
from physgen.io.hdf5 import _build, _n_rows, get_dataset, open_hdf5, read_rows
from physgen.io.layout import write_layout

__all__ = ["read_calogan", "iter_calogan", "write_calogan", "is_calogan"]

LAYER_KEYS = ("layer_0", "layer_1", "layer_2")
ENERGY_KEY = "energy"
GEV = 1000.0


def is_calogan(h5: h5py.File) -> bool:
    return any(k in h5 for k in LAYER_KEYS)


def iter_calogan(path: str | Path, *, chunk_size: int = 10_000) -> Iterator[Data]:
    """Stream a CaloGAN file as ``Data`` chunks (x in MeV, cond = incident energy in MeV)."""
    with open_hdf5(path) as h5:
        layers = [get_dataset(h5, k, path) for k in LAYER_KEYS]
        eds = get_dataset(h5, ENERGY_KEY, path)
        n = _n_rows(layers[0], path, LAYER_KEYS[0])
        for key, ds in zip(LAYER_KEYS, layers, strict=True):
            if ds.ndim != 3 or ds.shape[0] != n:
                raise InvalidContentError(
                    f"expected (N={n}, rows, cols) cell energies; got shape {ds.shape}", file=path, key=key
                )
        if eds.shape not in ((n,), (n, 1)):
            raise InvalidContentError(f"expected shape ({n}, 1); got {eds.shape}", file=path, key=ENERGY_KEY)
        geo = CalorimeterGeometry(
            layers=tuple(Layer(shape=(int(ds.shape[1]), int(ds.shape[2]))) for ds in layers), kind="cartesian"
        )
        schema = Schema(
            kind="calorimeter",
            units="MeV",
            cond_names=("incident_energy",),
            cond_units=("MeV",),
            geometry=geo,
            source_format="calogan",
        )
        overflow = h5.get("overflow")
        for a, b in chunk_bounds(n, chunk_size):
            parts = []
            for key, ds in zip(LAYER_KEYS, layers, strict=True):
                cells = read_rows(ds, a, b, path, key)
                check_values(cells, file=path, key=key, nonnegative=True)
                parts.append(cells.reshape(b - a, -1))
            energy = read_rows(eds, a, b, path, ENERGY_KEY).reshape(-1, 1)
            check_values(energy, file=path, key=ENERGY_KEY, positive=True)
            aux = {}
            if isinstance(overflow, h5py.Dataset) and overflow.shape[:1] == (n,):
                ov = np.asarray(overflow[a:b], dtype=np.float64).reshape(b - a, -1)
                aux = {f"overflow_{i}": ov[:, i] for i in range(ov.shape[1])}
            yield _build(path, LAYER_KEYS[0], np.concatenate(parts, axis=1), schema, energy * GEV, aux=aux)


def read_calogan(path: str | Path) -> Data:
    """Read a CaloGAN file whole."""
    return next(iter_calogan(path, chunk_size=1 << 62))


def calogan_layout(data: Data) -> dict[str, np.ndarray]:
    """CaloGAN's three layer datasets, ``energy`` (GeV) and, where ``aux`` has them, ``overflow`` (N, 3)."""
    geo = data.schema.geometry
    if geo is None or geo.kind != "cartesian" or geo.n_layers != 3:
        raise InvalidDataError("CaloGAN files need a cartesian 3-layer geometry (as read from a CaloGAN file)")
    if data.cond is None:
        raise InvalidDataError("CaloGAN files need the incident energy as cond[:, 0] (MeV); cond is missing")
    x = data.x.numpy()
    out = {}
    for i, (key, layer) in enumerate(zip(LAYER_KEYS, geo.layers, strict=True)):
        rows, cols = layer.shape  # type: ignore[misc]
        out[key] = x[:, geo.layer_slice(i)].reshape(-1, rows, cols)
    out[ENERGY_KEY] = (data.cond[:, :1].numpy() / GEV).astype(np.float32)
    ov = [data.aux[f"overflow_{i}"] for i in range(3) if f"overflow_{i}" in data.aux]
    if len(ov) == 3:
        out["overflow"] = np.stack(ov, axis=1).astype(np.float32)
    return out


def write_calogan(data: Data, path: str | Path) -> Path:
    """Write :func:`calogan_layout` atomically, the layers compressed."""
    return write_layout(path, calogan_layout(data), data.schema)
