"""The common tensors every part of physgen speaks: :class:`Data` and its :class:`Schema`.

Shapes, for the whole library:

* ``x``: float32 ``[N, *event_shape]`` — calorimeter voxels ``[N, n_voxels]`` (MeV),
  event features ``[N, F]`` or, for jagged lists, ``[N, P, F]``; spins ``[N, n_spins]`` (0/1).
* ``cond``: optional float32 ``[N, C]`` — e.g. the incident energy in MeV.
* ``mask``: optional bool ``[N, P]`` — which of the ``P`` padded list entries are real.
* ``aux``: optional per-event float64 arrays ``{name: [N]}`` carried along
  (e.g. ``geant4_cpu_s``, the simulator's CPU time per event).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from physgen.data.geometry import CalorimeterGeometry
from physgen.errors import InvalidDataError

__all__ = ["Schema", "Data", "Kind"]

Kind = Literal["calorimeter", "event", "spins"]
_KINDS = ("calorimeter", "event", "spins")


@dataclass(frozen=True)
class Schema:
    """What the numbers in a :class:`Data` mean.

    Attributes:
        kind: ``"calorimeter"``, ``"event"`` or ``"spins"``.
        feature_names: one name per feature (last axis of ``x``), or ``None``
            for calorimeter voxels, which the geometry names.
        units: unit of ``x`` (one string for all features, or one per feature).
        cond_names / cond_units: the same for ``cond``.
        geometry: the calorimeter readout (calorimeter data only).
        source_format: the format it was read from (``"calochallenge"``, ``"root"``, ...),
            so that writers can answer in the input's format.
        meta: free-form JSON-serialisable facts (tree name, particle, simulator).
    """

    kind: Kind
    feature_names: tuple[str, ...] | None = None
    units: str | tuple[str, ...] = ""
    cond_names: tuple[str, ...] = ()
    cond_units: tuple[str, ...] = ()
    geometry: CalorimeterGeometry | None = None
    source_format: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidDataError(f"schema kind must be one of {_KINDS}; got {self.kind!r}")
        if len(self.cond_units) not in (0, len(self.cond_names)):
            raise InvalidDataError(
                f"cond_units has {len(self.cond_units)} entries for {len(self.cond_names)} "
                "cond_names; expected one unit per condition"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_names": list(self.feature_names) if self.feature_names is not None else None,
            "units": self.units if isinstance(self.units, str) else list(self.units),
            "cond_names": list(self.cond_names),
            "cond_units": list(self.cond_units),
            "geometry": self.geometry.to_dict() if self.geometry is not None else None,
            "source_format": self.source_format,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        units = d.get("units", "")
        return cls(
            kind=d["kind"],
            feature_names=tuple(d["feature_names"]) if d.get("feature_names") is not None else None,
            units=units if isinstance(units, str) else tuple(units),
            cond_names=tuple(d.get("cond_names", ())),
            cond_units=tuple(d.get("cond_units", ())),
            geometry=CalorimeterGeometry.from_dict(d["geometry"]) if d.get("geometry") else None,
            source_format=d.get("source_format"),
            meta=dict(d.get("meta", {})),
        )


def _as_tensor(name: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise InvalidDataError(f"{name} must be numeric; got an array of dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or (t.dtype == torch.bool and dtype != torch.bool):
        raise InvalidDataError(f"{name} must be real-valued; got dtype {t.dtype}")
    return t.to(dtype)


class Data:
    """Events (showers, collision events, spin configurations) with conditions and schema.

    Validated on construction: ``x`` has at least 2 dimensions and ``N ≥ 1``
    rows; ``cond``/``mask``/``aux`` have ``N`` rows; values are finite;
    calorimeter energies and incident energies are ≥ 0; spins are 0 or 1.

    Args:
        x: ``[N, *event_shape]`` array-like, stored as float32.
        schema: what the numbers mean.
        cond: ``[N, C]`` conditions (a ``[N]`` vector becomes ``[N, 1]``).
        mask: ``[N, P]`` booleans for padded lists.
        aux: per-event extras ``{name: [N]}`` (not modelled, carried through slicing).
        validate: set ``False`` only for data physgen itself has just produced
            from already-validated data.

    Example:
        >>> import numpy as np
        >>> from physgen.data import Data, Schema
        >>> d = Data(np.ones((4, 3)), Schema(kind="event", feature_names=("a", "b", "c")))
        >>> d.x.shape, len(d)
        (torch.Size([4, 3]), 4)
    """

    def __init__(
        self,
        x: Any,
        schema: Schema,
        cond: Any | None = None,
        mask: Any | None = None,
        aux: Mapping[str, Any] | None = None,
        *,
        validate: bool = True,
    ):
        self.x = _as_tensor("x", x, torch.float32)
        self.cond = None if cond is None else _as_tensor("cond", cond, torch.float32)
        if self.cond is not None and self.cond.ndim == 1:
            self.cond = self.cond[:, None]
        self.mask = None if mask is None else _as_tensor("mask", mask, torch.bool)
        self.aux = {k: np.asarray(v, dtype=np.float64) for k, v in (aux or {}).items()}
        self.schema = schema
        if validate:
            self.validate()

    # -- validation ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`InvalidDataError` unless shapes agree and values are physical."""
        x, n = self.x, self.x.shape[0] if self.x.ndim else 0
        if x.ndim < 2:
            raise InvalidDataError(f"x must be [N, *event_shape] with ≥ 2 dims; got shape {tuple(x.shape)}")
        if n == 0:
            raise InvalidDataError("x holds no events (N = 0); expected at least one")
        if self.cond is not None:
            if self.cond.ndim != 2 or self.cond.shape[0] != n:
                raise InvalidDataError(
                    f"cond must be [N, C] with N = {n}; got shape {tuple(self.cond.shape)}"
                )
            if self.schema.cond_names and self.cond.shape[1] != len(self.schema.cond_names):
                raise InvalidDataError(
                    f"cond has {self.cond.shape[1]} columns but the schema names "
                    f"{len(self.schema.cond_names)}: {self.schema.cond_names}"
                )
            _check_finite("cond", self.cond)
        if self.mask is not None and (self.mask.ndim != 2 or self.mask.shape[0] != n):
            raise InvalidDataError(f"mask must be [N, P] with N = {n}; got shape {tuple(self.mask.shape)}")
        if self.mask is not None and (x.ndim != 3 or x.shape[1] != self.mask.shape[1]):
            raise InvalidDataError(
                f"with a mask [N, P] = {tuple(self.mask.shape)}, x must be [N, P, F]; got {tuple(x.shape)}"
            )
        for k, v in self.aux.items():
            if v.shape[:1] != (n,):
                raise InvalidDataError(f"aux[{k!r}] must have N = {n} rows; got shape {v.shape}")
        if self.schema.feature_names is not None and x.shape[-1] != len(self.schema.feature_names):
            raise InvalidDataError(
                f"x has {x.shape[-1]} features on its last axis but the schema names "
                f"{len(self.schema.feature_names)}"
            )
        _check_finite("x", x)
        kind = self.schema.kind
        if kind == "calorimeter":
            geo = self.schema.geometry
            if geo is not None and (x.ndim != 2 or x.shape[1] != geo.n_voxels):
                raise InvalidDataError(
                    f"calorimeter x must be [N, n_voxels] = [N, {geo.n_voxels}] for its geometry; "
                    f"got {tuple(x.shape)}"
                )
            _check_nonnegative("x (voxel energies)", x)
            if self.cond is not None:  # the incident energy (column 0) and other energies; an angle may be negative
                from physgen.units import is_energy

                units = self.schema.cond_units
                energies = [i for i in range(self.cond.shape[1]) if i == 0 or i < len(units) and is_energy(units[i])]
                _check_nonnegative("cond (incident energies)", self.cond[:, energies])
        elif kind == "spins":
            bad = ~((x == 0) | (x == 1))
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise InvalidDataError(f"spins must be 0 or 1; event {i} holds {x[i][bad[i]][:3].tolist()}")

    # -- basic protocol --------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def geometry(self) -> CalorimeterGeometry | None:
        return self.schema.geometry

    def __repr__(self) -> str:
        c = f", cond={tuple(self.cond.shape)}" if self.cond is not None else ""
        m = f", mask={tuple(self.mask.shape)}" if self.mask is not None else ""
        return f"Data(kind={self.schema.kind!r}, x={tuple(self.x.shape)}{c}{m})"

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray | torch.Tensor) -> Data:
        """Rows by slice, integer, index array or boolean mask; always returns ``Data``."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, list | tuple):
            index = np.asarray(index)
        idx_t = torch.from_numpy(index) if isinstance(index, np.ndarray) else index
        return Data(
            self.x[idx_t],
            self.schema,
            cond=None if self.cond is None else self.cond[idx_t],
            mask=None if self.mask is None else self.mask[idx_t],
            aux={k: v[index] for k, v in self.aux.items()},
            validate=False,
        )

    def with_x(self, x: torch.Tensor, *, validate: bool = True) -> Data:
        """Same conditions, mask and schema with new ``x`` (e.g. generated samples)."""
        return Data(x, self.schema, cond=self.cond, mask=self.mask, aux=None, validate=validate)

    def replace_schema(self, **changes: Any) -> Data:
        return Data(self.x, replace(self.schema, **changes), self.cond, self.mask, self.aux, validate=False)

    @staticmethod
    def concat(parts: Sequence[Data]) -> Data:
        """Stack several ``Data`` of the same schema along N."""
        if not parts:
            raise InvalidDataError("concat needs at least one Data")
        first = parts[0]
        for p in parts[1:]:
            if p.event_shape != first.event_shape:
                raise InvalidDataError(
                    f"cannot concat event shapes {first.event_shape} and {p.event_shape}"
                )
        return Data(
            torch.cat([p.x for p in parts]),
            first.schema,
            cond=None if first.cond is None else torch.cat([p.cond for p in parts]),  # type: ignore[misc]
            mask=None if first.mask is None else torch.cat([p.mask for p in parts]),  # type: ignore[misc]
            aux={k: np.concatenate([p.aux[k] for p in parts]) for k in first.aux},
            validate=False,
        )

    # -- splitting and iteration -----------------------------------------------------
    def split(
        self, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
    ) -> tuple[Data, ...]:
        """Deterministic random split into disjoint parts, e.g. train/val/test.

        Args:
            fractions: positive fractions summing to 1; the last part takes the rounding.
            seed: same seed and same N → same split, on every machine.
        """
        fr = np.asarray(fractions, dtype=np.float64)
        if fr.ndim != 1 or len(fr) < 2 or (fr <= 0).any() or abs(fr.sum() - 1.0) > 1e-6:
            raise InvalidDataError(f"fractions must be ≥ 2 positive numbers summing to 1; got {list(fractions)}")
        n = len(self)
        perm = np.random.default_rng(seed).permutation(n)
        bounds = np.round(np.cumsum(fr)[:-1] * n).astype(int)
        return tuple(self[np.sort(p)] for p in np.split(perm, bounds))

    def iter_batches(self, batch_size: int) -> Iterator[Data]:
        """Consecutive ``Data`` chunks of at most ``batch_size`` rows."""
        if batch_size < 1:
            raise InvalidDataError(f"batch_size must be ≥ 1; got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self[start : start + batch_size]

    def to_torch_dataset(self) -> Dataset:
        """A :class:`~torch.utils.data.TensorDataset` of ``(x, cond[, mask])`` rows.

        ``cond`` is an empty ``[N, 0]`` tensor for unconditional data, so batches
        always unpack the same way.
        """
        cond = self.cond if self.cond is not None else torch.zeros(len(self), 0)
        tensors = [self.x, cond] + ([self.mask] if self.mask is not None else [])
        return TensorDataset(*tensors)

    def dataloader(
        self, batch_size: int = 256, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> DataLoader:
        """A DataLoader over :meth:`to_torch_dataset` with a seeded shuffle."""
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            self.to_torch_dataset(), batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last
        )

    # -- summaries -------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable description: shapes, ranges, geometry, mean energies."""
        s: dict[str, Any] = {
            "kind": self.schema.kind,
            "format": self.schema.source_format,
            "n_events": len(self),
            "event_shape": list(self.event_shape),
            "units": self.schema.units,
        }
        if self.schema.feature_names is not None:
            s["features"] = list(self.schema.feature_names)
        if self.cond is not None:
            s["conditions"] = {
                name: {"min": float(self.cond[:, i].min()), "max": float(self.cond[:, i].max())}
                for i, name in enumerate(self.schema.cond_names or [f"c{i}" for i in range(self.cond.shape[1])])
            }
            s["cond_units"] = list(self.schema.cond_units)
        if self.mask is not None:
            counts = self.mask.sum(1)
            s["list_length"] = {"mean": float(counts.float().mean()), "max": int(counts.max())}
        geo = self.schema.geometry
        if geo is not None:
            s["geometry"] = {
                "kind": geo.kind,
                "n_layers": geo.n_layers,
                "relevant_layers": len(geo.relevant_layers),
                "n_voxels": geo.n_voxels,
            }
        if self.schema.kind == "calorimeter":
            e_tot = self.x.double().sum(1)
            s["mean_total_energy"] = float(e_tot.mean())
            s["voxel_occupancy"] = float((self.x > 0).double().mean())
            if self.cond is not None:
                ratio = e_tot / self.cond[:, 0].double().clamp_min(1e-30)
                s["e_tot_over_e_inc"] = {"mean": float(ratio.mean()), "std": float(ratio.std())}
        for k, v in self.aux.items():
            s.setdefault("aux", {})[k] = {"mean": float(v.mean()), "sum": float(v.sum())}
        return s


def _check_finite(name: str, t: torch.Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        raise InvalidDataError(
            f"{name} must be finite; found {int(bad.sum())} NaN/inf value(s), first at index {idx} "
            f"(value {t[tuple(idx)].item()})"
        )


def _check_nonnegative(name: str, t: torch.Tensor) -> None:
    neg = t < 0
    if bool(neg.any()):
        idx = neg.nonzero()[0].tolist()
        raise InvalidDataError(
            f"{name} must be ≥ 0; found {int(neg.sum())} negative value(s), first {t[tuple(idx)].item():.6g} "
            f"at index {idx}"
        )
