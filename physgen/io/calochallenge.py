"""CaloChallenge 2022 HDF5: ``incident_energies`` (N, 1) and ``showers`` (N, n_voxels), MeV.

Voxels are ordered layer → angle → radius; the geometry comes from a binning
XML. Where it is not given, physgen looks, in order, at a schema it stored in
the file, at the ``aux`` group attributes of the Geant4 files made for this
project (``r_edges_mm``, ``n_alpha``, ``z_edges_mm``), and at the four official
binnings (matched by voxel count).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from physgen.data.container import Data, Schema
from physgen.data.geometry import CalorimeterGeometry, official_binning, read_binning_xml
from physgen.errors import FileFormatError, GeometryError, InvalidDataError
from physgen.io._common import InvalidContentError, check_values, chunk_bounds
from physgen.io.hdf5 import _build, _n_rows, get_dataset, open_hdf5, read_rows
from physgen.io.layout import write_layout

__all__ = ["read_calochallenge", "iter_calochallenge", "write_calochallenge", "is_calochallenge"]

ENERGY_KEY = "incident_energies"
SHOWER_KEY = "showers"
#: (N, C) every condition, written where there is more than the incident energy
COND_KEY = "conditions"


def is_calochallenge(h5: h5py.File) -> bool:
    return SHOWER_KEY in h5 or ENERGY_KEY in h5


def _geometry(
    h5: h5py.File, path: str | Path, n_voxels: int, binning: str | Path | CalorimeterGeometry | None
) -> CalorimeterGeometry | None:
    geo: CalorimeterGeometry | None
    if isinstance(binning, CalorimeterGeometry):
        geo = binning
    elif binning is not None:
        geo = read_binning_xml(binning)
    elif "physgen_schema" in h5.attrs:
        try:
            stored = json.loads(h5.attrs["physgen_schema"])
            geo = CalorimeterGeometry.from_dict(stored["geometry"]) if stored.get("geometry") else None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise FileFormatError(f"the stored physgen_schema attribute is not valid ({exc}); pass binning= to read the showers", file=path, key="physgen_schema") from exc
    elif "aux" in h5 and "r_edges_mm" in h5["aux"].attrs:
        try:
            a = h5["aux"].attrs
            z = np.asarray(a["z_edges_mm"], dtype=np.float64) if "z_edges_mm" in a else None
            per_layer = (len(a["r_edges_mm"]) - 1) * int(a["n_alpha"])
            n_layers = len(z) - 1 if z is not None else n_voxels // per_layer
            geo = CalorimeterGeometry.polar(a["r_edges_mm"], int(a["n_alpha"]), n_layers, z, particle=_text(a.get("particle")))
        except (ValueError, TypeError, KeyError, ZeroDivisionError) as exc:
            raise FileFormatError(f"the aux group's binning attributes (r_edges_mm, n_alpha, z_edges_mm) are not valid ({exc}); pass binning=",
                                  file=path, key="aux") from exc
    else:
        geo = official_binning(n_voxels)
    if geo is not None and geo.n_voxels != n_voxels:
        raise GeometryError(
            f"the showers have {n_voxels} voxels but the binning describes {geo.n_voxels} "
            f"({geo.n_layers} layers)",
            file=path,
            key=SHOWER_KEY,
        )
    return geo


def _conditions(h5: h5py.File, path: str | Path, n: int) -> tuple[h5py.Dataset | None, tuple[str, ...], tuple[str, ...]]:
    """The ``conditions`` dataset physgen writes for models with more than the incident energy, and its names and units."""
    if COND_KEY not in h5:
        return None, ("incident_energy",), ("MeV",)
    cds = get_dataset(h5, COND_KEY, path)
    if cds.ndim != 2 or cds.shape[0] != n:
        raise InvalidContentError(f"expected shape ({n}, C) to match the showers; got {cds.shape}", file=path, key=COND_KEY)
    names, units = tuple(f"cond{i}" for i in range(cds.shape[1])), ()
    if "physgen_schema" in h5.attrs:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            stored = json.loads(h5.attrs["physgen_schema"])
            if len(stored["cond_names"]) == cds.shape[1]:
                names, units = tuple(stored["cond_names"]), tuple(stored.get("cond_units") or ())
    return cds, names, units


def _text(v: object) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def iter_calochallenge(
    path: str | Path,
    *,
    binning: str | Path | CalorimeterGeometry | None = None,
    chunk_size: int = 10_000,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Data]:
    """Stream a CaloChallenge file in chunks (dataset 3: 100k × 40,500 voxels).

    Args:
        path: the HDF5 file.
        binning: a binning XML path or a geometry; see the module docstring when omitted.
        chunk_size: events per chunk.
        start, stop: read only events ``start:stop``.

    Raises:
        MissingKeyError, InvalidContentError, GeometryError, FileFormatError.
    """
    with open_hdf5(path) as h5:
        sds = get_dataset(h5, SHOWER_KEY, path)
        eds = get_dataset(h5, ENERGY_KEY, path)
        n = _n_rows(sds, path, SHOWER_KEY)
        _n_rows(eds, path, ENERGY_KEY)
        if sds.ndim != 2:
            raise InvalidContentError(f"expected showers of shape (N, n_voxels); got {sds.shape}", file=path, key=SHOWER_KEY)
        if eds.shape not in ((n, 1), (n,)):
            raise InvalidContentError(
                f"expected shape ({n}, 1) to match the showers; got {eds.shape}", file=path, key=ENERGY_KEY
            )
        geo = _geometry(h5, path, int(sds.shape[1]), binning)
        aux_ds = {}
        if "aux" in h5 and isinstance(h5["aux"], h5py.Group):
            aux_ds = {k: v for k, v in h5["aux"].items() if isinstance(v, h5py.Dataset) and v.shape == (n,)}
        particle = geo.particle if geo is not None else None
        if "aux" in h5 and "particle" in h5["aux"].attrs:
            particle = _text(h5["aux"].attrs["particle"])
        cds, cond_names, cond_units = _conditions(h5, path, n)
        schema = Schema(
            kind="calorimeter",
            units="MeV",
            cond_names=cond_names,
            cond_units=cond_units,
            geometry=geo,
            source_format="calochallenge",
            meta={"particle": particle} if particle else {},
        )
        stop = n if stop is None else min(stop, n)
        if not 0 <= start < stop:
            raise InvalidContentError(f"no events in start:stop = {start}:{stop} of the file's {n}", file=path, key=SHOWER_KEY)
        for s0, s1 in chunk_bounds(stop - start, chunk_size):
            a, b = start + s0, start + s1
            showers = read_rows(sds, a, b, path, SHOWER_KEY)
            energies = read_rows(eds, a, b, path, ENERGY_KEY).reshape(-1, 1)
            check_values(showers, file=path, key=SHOWER_KEY, nonnegative=True)
            check_values(energies, file=path, key=ENERGY_KEY, positive=True)
            aux = {k: np.asarray(v[a:b], dtype=np.float64) for k, v in aux_ds.items()}
            if cds is not None:
                energies = read_rows(cds, a, b, path, COND_KEY)
                check_values(energies, file=path, key=COND_KEY)
            yield _build(path, SHOWER_KEY, showers, schema, energies, aux=aux)


def read_calochallenge(
    path: str | Path,
    *,
    binning: str | Path | CalorimeterGeometry | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Data:
    """Read a CaloChallenge file whole (or events ``start:stop``) as float32."""
    return next(iter_calochallenge(path, binning=binning, chunk_size=1 << 62, start=start, stop=stop))


def calochallenge_layout(data: Data) -> dict[str, np.ndarray]:
    """The datasets a CaloChallenge file holds for ``data``: ``incident_energies`` (N, 1) and ``showers`` as float64.

    The official evaluator reads these two with h5py and feeds them as they are to its float64 classifier,
    which refuses float32 inputs. A model with more than one condition (e.g. the incident angle) also gets
    ``conditions`` (N, C), named by the schema; ``aux`` arrays go to the ``aux`` group, which other readers ignore.
    """
    if data.schema.kind != "calorimeter" or data.x.ndim != 2:
        raise InvalidDataError(f"CaloChallenge files hold calorimeter showers [N, n_voxels]; got {data!r}")
    if data.cond is None or data.cond.shape[1] < 1:
        raise InvalidDataError("CaloChallenge files need the incident energy as cond[:, 0] (MeV); cond is missing")
    cond = data.cond.numpy()
    out = {ENERGY_KEY: cond[:, :1].astype(np.float64), SHOWER_KEY: data.x.numpy()}
    if cond.shape[1] > 1:
        out[COND_KEY] = cond.astype(np.float64)
    out.update({f"aux/{k}": v for k, v in data.aux.items()})
    return out


def write_calochallenge(data: Data, path: str | Path, *, compression: str | None = "gzip") -> Path:
    """Write :func:`calochallenge_layout` atomically, the showers as float64 (the evaluator's dtype), compressed.

    physgen adds the schema (geometry included) as a JSON attribute.
    """
    return write_layout(path, calochallenge_layout(data), data.schema, dtypes={SHOWER_KEY: np.float64}, compression=compression)
