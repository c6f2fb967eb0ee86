"""The read-out calibration: cuts and a hit-value map, fitted to a model's samples after training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from physgen.data.groups import FeatureGroups
from physgen.errors import InvalidDataError

__all__ = ["ReadoutCalibration"]


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


class ReadoutCalibration:
    """A read-out of generated showers: energies below a threshold (MeV) are cut, as a detector's read-out would.

    A model's samples go through it after the inverse preprocessing (models train on the
    recorded showers), so the small positive values a continuous model leaves in voxels
    Geant4 kept empty are cut. With ``quantile`` set, :meth:`fit_threshold` takes the global
    threshold as that quantile of the training data's non-zero voxel energies, so the cut
    removes that fraction of Geant4's own (smallest) deposits and no more.

    A global cut cannot fix a model that smears the zero spike of the deep,
    sparse layers into many small deposits: their hit counts, widths and radial
    centroids come out too large. :meth:`calibrate` fits, in addition, one
    threshold per voxel and incident-energy bin, chosen so that the model's
    pre-cut samples have Geant4's occupancy (the fraction of showers with a
    non-zero deposit) in that voxel and bin: a quantile map on the hit/no-hit
    decision, fitted on training data only. With ``layer_sizes`` the energy
    cut from a layer is given back to that layer's surviving voxels in
    proportion, so a cut never changes the layer energies (and E_tot) that a
    model's first stage generated.

    With ``layer_sizes``, :meth:`calibrate` also fits one threshold per layer and
    energy bin on the layer energies, by the same quantile map: a layer is read out
    iff its energy reaches it, so each layer is non-empty as often as in Geant4. A
    layer read out keeps at least its largest voxel, however many the voxel cuts
    remove; a layer not read out is emptied. Per-voxel cuts alone emptied whole
    layers whose energy a model had spread over many small deposits (the design notes have the measurements).

    With ``rings`` (each voxel's group of equivalent voxels: the shower model passes the
    orbits of :func:`~physgen.calorimeter.symmetry.azimuthal_orbits`, the rings of a polar geometry),
    :meth:`calibrate` can also fit a map of the hit values (``values=True``): after the
    cuts, each hit's share of its layer's energy goes through a quantile map, one per
    ring and incident-energy bin, from the model's read-out hits to Geant4's (``K``
    knots at equally spaced quantiles of the log share, linear between them, a shift
    beyond the end knots), and each layer is rescaled to its energy again. It fixes
    the hit *values* as the cuts fix the hit *counts*, and changes neither count, nor
    any layer energy. A continuous model smears a sparse voxel's point mass at zero
    into small values: the cuts then give it Geant4's occupancy, but its surviving
    hits are the smallest of Geant4's, and its energy sits at too small a radius.

    Args:
        threshold: the global threshold (MeV).
        quantile: fit the global threshold as this quantile of the non-zero training voxels.
        layer_sizes: voxels per layer, to keep each layer's energy through the cut.
        edges: the incident-energy bin edges of a calibration (:meth:`calibrate`), as saved.
        voxel_thresholds: one threshold per energy bin and voxel, as saved.
        layer_thresholds: one threshold per energy bin and layer, as saved.
        rings: the ring of each voxel.
        value_knots: the hit-value map (``[bins, rings, 2, K]``: the model's and Geant4's knots in log share), as saved.
    """

    def __init__(
        self,
        threshold: float = 0.0,
        quantile: float | None = None,
        layer_sizes: Sequence[int] | None = None,
        edges: Sequence[float] | None = None,
        voxel_thresholds: Sequence[Sequence[float]] | None = None,
        layer_thresholds: Sequence[Sequence[float]] | None = None,
        rings: Sequence[int] | None = None,
        value_knots: Sequence[Any] | None = None,
    ):
        if quantile is not None and not 0 <= quantile < 1:
            raise InvalidDataError(f"readout threshold quantile must be in [0, 1); got {quantile}")
        if threshold < 0:
            raise InvalidDataError(f"readout threshold must be ≥ 0 MeV; got {threshold}")
        self.threshold, self.quantile = float(threshold), None if quantile is None else float(quantile)
        self.layer_sizes = None if layer_sizes is None else [int(s) for s in layer_sizes if int(s) > 0]
        self._layers = None if self.layer_sizes is None else FeatureGroups(self.layer_sizes)
        self.edges = None if edges is None else [float(e) for e in edges]
        self.voxel_thresholds = None if voxel_thresholds is None else torch.tensor(voxel_thresholds, dtype=torch.float64)
        if (self.edges is None) != (self.voxel_thresholds is None) or (
            self.voxel_thresholds is not None and (self.voxel_thresholds.ndim != 2 or len(self.edges) != self.voxel_thresholds.shape[0] - 1)
        ):
            raise InvalidDataError("readout threshold: voxel_thresholds needs one row per energy bin and len(edges) = bins − 1")
        self.layer_thresholds = None if layer_thresholds is None else torch.tensor(layer_thresholds, dtype=torch.float64)
        if self.layer_thresholds is not None and (
            self.voxel_thresholds is None or self._layers is None
            or tuple(self.layer_thresholds.shape) != (self.voxel_thresholds.shape[0], len(self._layers))
        ):
            raise InvalidDataError("readout threshold: layer_thresholds needs layer_sizes and one row of one threshold per layer for each energy bin")
        self.rings = None if rings is None else torch.tensor(rings, dtype=torch.long)
        if self.rings is not None and (self.rings.ndim != 1 or len(self.rings) == 0 or int(self.rings.min()) < 0):
            raise InvalidDataError("readout threshold: rings needs one ring id ≥ 0 per voxel")
        self.value_knots = None if value_knots is None else torch.tensor(value_knots, dtype=torch.float64)
        if self.value_knots is not None:
            k = self.value_knots
            if (
                self.rings is None or self.voxel_thresholds is None or self._layers is None or k.ndim != 4
                or k.shape[0] != self.voxel_thresholds.shape[0] or k.shape[1] != int(self.rings.max()) + 1 or k.shape[2] != 2 or k.shape[3] < 2
            ):
                raise InvalidDataError(
                    "readout threshold: value_knots needs rings, layer_sizes and voxel_thresholds, and the shape "
                    f"[energy bins, rings, 2, K ≥ 2]; got {tuple(k.shape)}"
                )
            if not bool(torch.isfinite(k).all()) or bool((k.diff(dim=-1) < 0).any()):
                raise InvalidDataError("readout threshold: value_knots must be finite and non-decreasing along each map")
        self._value_table: tuple[torch.Tensor, ...] | None = None

    @property
    def calibrated(self) -> bool:
        """Whether per-voxel cuts have been fitted (:meth:`fit`)."""
        return self.voxel_thresholds is not None

    def fit_threshold(self, x: torch.Tensor) -> ReadoutCalibration:
        """The global threshold from the training showers ``x`` ``[N, V]`` (MeV); clears any calibration."""
        if self.quantile is not None:
            nonzero = x[x > 0].double().numpy()
            self.threshold = float(np.quantile(nonzero, self.quantile)) if nonzero.size else 0.0
        self.edges = self.voxel_thresholds = self.layer_thresholds = self.value_knots = None
        if self.layer_sizes is not None and sum(self.layer_sizes) != x.shape[1]:
            raise InvalidDataError(f"readout threshold: layer sizes add up to {sum(self.layer_sizes)} voxels, data has {x.shape[1]}")
        return self

    @staticmethod
    def _bin_key(cond: torch.Tensor | None, n: int) -> torch.Tensor:
        """log of the first condition column (the incident energy), or zeros without conditions."""
        if cond is None:
            return torch.zeros(n, dtype=torch.float64)
        c = _f64(cond).reshape(n, -1)[:, 0]
        return torch.log(c.clamp_min(1e-300))

    def calibrate(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        generated: torch.Tensor,
        generated_cond: torch.Tensor | None,
        bins: int = 4,
        min_per_bin: int = 50,
        values: bool = False,
        rings: Sequence[int] | torch.Tensor | None = None,
        knots: int = 33,
        min_hits: int = 20,
        pool_bins: bool = True,
        floor: bool = True,
    ) -> ReadoutCalibration:
        """Fit per-voxel thresholds so that ``generated`` (pre-cut samples) has ``x``'s occupancy.

        Args:
            x: training showers (MeV).
            cond: their conditions.
            generated: the model's samples *before* any cut, at (a subset of) the training conditions.
            generated_cond: their conditions.
            bins: incident-energy bins (equal-population in log of ``cond[:, 0]``);
                fewer are used when a bin would hold under ``min_per_bin`` showers.
            values: also fit the hit-value map (needs ``layer_sizes`` and ``rings``):
                ``knots`` quantiles per ring and energy bin; a ring with fewer than
                ``min_hits`` hits in the bin, in ``x`` or in the read-out samples, takes its map over
                all bins (``pool_bins``, the default) if that has enough, else is left as it is.
            rings: each voxel's ring (its azimuthal orbit), if not given at construction.
            floor: keep every per-voxel cut at or above the global threshold (the default). With
                ``False`` a cut may go down to zero, so that a voxel whose sampled values are smaller
                than Geant4's still gets Geant4's occupancy: meant for use with ``values``, whose map
                then gives those hits Geant4's values.
        """
        x, g = _f64(x), _f64(generated)
        if x.ndim != 2 or g.ndim != 2 or x.shape[1] != g.shape[1]:
            raise InvalidDataError(f"readout calibration needs [N, V] data and samples of equal V; got {tuple(x.shape)} and {tuple(g.shape)}")
        if bins < 1:
            raise InvalidDataError(f"readout calibration bins must be ≥ 1; got {bins}")
        kx, kg = self._bin_key(cond, len(x)), self._bin_key(generated_cond, len(g))
        bins = max(1, min(int(bins), len(x) // min_per_bin, len(g) // min_per_bin))
        inner = torch.quantile(kx, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]) if bins > 1 else torch.zeros(0, dtype=torch.float64)
        bx, bg = torch.bucketize(kx, inner, right=True), torch.bucketize(kg, inner, right=True)
        layers = self._layers if self._layers is not None and self._layers.n_voxels == x.shape[1] else None
        rows, layer_rows = [], []
        for b in range(bins):
            xb, gb = x[bx == b], g[bg == b]  # copies: gb's unread layers are emptied in place below
            if len(xb) == 0 or len(gb) == 0:
                rows.append(torch.full((x.shape[1],), self.threshold, dtype=torch.float64))
                layer_rows.append(torch.zeros(len(layers) if layers is not None else 0, dtype=torch.float64))
                continue
            if layers is not None:
                # layers first: the voxel cuts are fitted on the samples whose unread layers are already empty
                e_gen = layers.sums(gb.clamp_min(0))
                layer_rows.append(_occupancy_quantile(e_gen, (layers.sums(xb) > 0).double().mean(0)))
                layers.scale_(gb, self._read_out(e_gen, layer_rows[-1]).double())
            rows.append(_occupancy_quantile(gb, (xb > 0).double().mean(0)).clamp_min(self.threshold if floor else 0.0))
        self.edges, self.voxel_thresholds = inner.tolist(), torch.stack(rows)
        self.layer_thresholds = torch.stack(layer_rows) if layers is not None else None
        self.value_knots = None
        if values:
            if rings is not None:
                self.rings = torch.as_tensor(rings, dtype=torch.long).reshape(-1)
            if layers is None or self.rings is None or len(self.rings) != x.shape[1] or int(self.rings.min()) < 0:
                raise InvalidDataError(
                    f"the hit-value calibration needs layer_sizes and one ring id ≥ 0 per voxel (rings) for the {x.shape[1]} voxels; got "
                    + ("no layer sizes" if layers is None else "no rings" if self.rings is None else f"{len(self.rings)} ring ids")
                )
            if knots < 2 or min_hits < 2:
                raise InvalidDataError(f"the hit-value calibration needs knots ≥ 2 and min_hits ≥ 2; got {knots} and {min_hits}")
            read = self.apply(generated, generated_cond)  # the samples as read out: cut, layer energies kept
            self.value_knots = self._fit_value_knots(x, bx, read, bg, bins, layers, knots, min_hits, pool=pool_bins)
        return self

    @staticmethod
    def _log_shares(x: torch.Tensor, layers: FeatureGroups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every hit of ``x`` ``[N, V]``: its row, its voxel, and the log of its share of its layer's energy."""
        rows, cols = (x > 0).nonzero(as_tuple=True)
        return rows, cols, torch.log(x[rows, cols] / layers.per_voxel(layers.sums(x))[rows, cols])

    def _fit_value_knots(
        self, x: torch.Tensor, bx: torch.Tensor, g: torch.Tensor, bg: torch.Tensor, bins: int, layers: FeatureGroups, knots: int, min_hits: int,
        pool: bool = True,
    ) -> torch.Tensor:
        """``[bins, rings, 2, knots]``: per energy bin and ring, the read-out samples' and ``x``'s log-share quantiles."""
        assert self.rings is not None
        n_rings = int(self.rings.max()) + 1
        levels = torch.linspace(0, 1, knots, dtype=torch.float64)
        identity = torch.linspace(-30.0, 0.0, knots, dtype=torch.float64)  # equal knots: the map is the identity
        out = identity.expand(bins, n_rings, 2, knots).clone()
        hits = [self._log_shares(x, layers), self._log_shares(g, layers)]

        def fit(b: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """The read-out samples' and ``x``'s knots per ring in energy bin ``b`` (None: all bins), and which rings have enough hits."""
            qs = []
            for (rows, cols, share), which in zip(hits, (bx, bg), strict=True):
                keep = torch.ones_like(rows, dtype=torch.bool) if b is None else which[rows] == b
                qs.append(_ring_quantiles(self.rings[cols[keep]], share[keep], n_rings, levels))
            (q_x, n_x), (q_g, n_g) = qs
            return q_g, q_x, (n_x >= min_hits) & (n_g >= min_hits) & (q_g[:, -1] - q_g[:, 0] > 1e-9)

        # a ring with too few hits in a bin falls back on its map over all bins: the sparse outer rings of the
        # first and last layers at low energy, where a model's smeared point mass leaves the smallest values
        pooled = fit(None) if pool and bins > 1 else None
        for b in range(bins):
            q_g, q_x, ok = fit(b)
            out[b, ok, 0], out[b, ok, 1] = q_g[ok], q_x[ok]
            if pooled is not None:
                fallback = ~ok & pooled[2]
                out[b, fallback, 0], out[b, fallback, 1] = pooled[0][fallback], pooled[1][fallback]
        return out

    #: grid points per map in the inverse's lookup table (the maps are linear between knots)
    VALUE_GRID = 256

    def _value_lookup(self) -> tuple[torch.Tensor, ...]:
        """The maps as lookup tables, so that a hit costs a few gathers from small arrays whatever ``K``.

        Per (energy bin, voxel): its map's grid start, 1/step (``VALUE_GRID`` steps from the first
        knot to the last) and first grid point; per grid point: the map's value and its slope to
        the next. float32 (the samples are float32): half the cache a float64 table would take.
        Built on first use and whenever ``value_knots`` is replaced.
        """
        if self._value_table is None or self._value_table[0] is not self.value_knots:
            assert self.value_knots is not None and self.rings is not None
            k, grid_n = self.value_knots, self.VALUE_GRID
            bins, n_rings, _, n_knots = k.shape
            q_g, q_x = k.reshape(-1, 2, n_knots).unbind(1)
            lo = q_g[:, 0]
            step = ((q_g[:, -1] - lo) / grid_n).clamp_min(1e-12)
            grid = lo[:, None] + step[:, None] * torch.arange(grid_n + 1, dtype=torch.float64)
            value = torch.from_numpy(np.stack([np.interp(g, xp, fp) for g, xp, fp in zip(grid.numpy(), q_g.numpy(), q_x.numpy(), strict=True)]))
            slope = torch.cat([value.diff(dim=1), torch.zeros(len(value), 1, dtype=torch.float64)], 1)  # at the last point t − j = 0
            map_of = (torch.arange(bins)[:, None] * n_rings + self.rings[None, :]).reshape(-1)  # (bin, voxel) → map
            self._value_table = (
                k, lo[map_of].float(), (1 / step)[map_of].float(), (map_of * (grid_n + 1)).int(),
                value.reshape(-1).float(), slope.reshape(-1).float(),
            )
        return self._value_table

    def _map_values_(self, out: torch.Tensor, b: torch.Tensor, layers: FeatureGroups, energy: torch.Tensor) -> torch.Tensor:
        """Send each hit's log layer share through its ring's map, then give each layer ``energy`` ``[N, L]`` back (in place).

        Beyond a map's end knots the share is shifted by the end knots' difference. ``out``
        becomes the layer shares in place, hits are found with numpy's ``flatnonzero`` (4x
        torch's ``nonzero`` on one CPU core), and each hit's (energy bin, voxel) comes from its
        flat index and its row's bin: the rest is gathers from small tables, in float32.
        """
        _, lo, inv_step, first, value, slope = self._value_lookup()
        n, v = out.shape
        layers.scale_(out, torch.where(energy > 0, 1 / energy.clamp_min(1e-300), torch.zeros_like(energy)))  # shares
        flat = out.view(-1)
        hit = flat > 0
        if flat.device.type == "cpu":
            at = torch.from_numpy(np.flatnonzero(hit.numpy()))
        else:
            at = hit.nonzero().squeeze(1)
        if len(at) == 0:
            return out
        counts = torch.searchsorted(at, torch.arange(n + 1, device=at.device) * v).diff()  # hits per row: at is sorted
        key = at + torch.repeat_interleave((b - torch.arange(n, device=b.device)) * v, counts)  # bin · V + voxel
        share = flat.index_select(0, at).float().log_()
        inv = inv_step.index_select(0, key)
        u = (share - lo.index_select(0, key)).mul_(inv)  # grid units from the map's first knot
        t = u.clamp(0, self.VALUE_GRID)
        j = t.floor()
        point = first.index_select(0, key).add_(j.int())
        beyond = u.sub_(t).div_(inv)  # past the end knots: a shift
        mapped = torch.addcmul(value.index_select(0, point), t.sub_(j), slope.index_select(0, point)).add_(beyond)
        flat.index_copy_(0, at, mapped.exp_().double())
        after = layers.sums(out)
        return layers.scale_(out, torch.where(after > 0, energy / after.clamp_min(1e-300), torch.ones_like(after)))

    @staticmethod
    def _read_out(layer_energy: torch.Tensor, layer_threshold: torch.Tensor) -> torch.Tensor:
        """Which layers ``[N, L]`` are read out: a non-zero energy at or above the layer's threshold."""
        return (layer_energy >= layer_threshold) & (layer_energy > 0)

    def apply(self, y: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Read out showers ``y`` ``[N, V]`` (MeV, float64) at raw conditions ``cond``: cuts, then the value map."""
        y = _f64(y)
        t: torch.Tensor | float = self.threshold
        if self.voxel_thresholds is not None:
            b = torch.bucketize(self._bin_key(cond, len(y)), torch.tensor(self.edges, dtype=torch.float64), right=True)
            t = self.voxel_thresholds.index_select(0, b)
        cut = y * (y >= t)  # = where(y < t, 0, y) for finite y, at a third of its cost on a CPU
        layers = self._layers
        if layers is None or layers.n_voxels != y.shape[1]:
            return cut
        before = layers.sums(y.clamp_min(0) if bool((y < 0).any()) else y)
        after = layers.sums(cut)
        read = None
        if self.layer_thresholds is not None:
            read = self._read_out(before, self.layer_thresholds[b])
            lost = read & (after <= 0)
            if bool(lost.any()):  # a layer read out keeps its largest voxel, whatever the voxel cuts said
                layers.keep_largest_(cut, y, lost)
                after = torch.where(lost, layers.sums(cut), after)
        # give each layer's cut energy back to its surviving voxels, in proportion; a layer not read out is emptied
        scale = torch.where(after > 0, before / after.clamp_min(1e-300), torch.ones_like(after))
        if read is not None:
            scale.mul_(read)
        cut = layers.scale_(cut, scale)
        if self.value_knots is None:
            return cut
        return self._map_values_(cut, b, layers, before * scale.gt(0))  # the layers' energies as read out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments and fitted values."""
        return {
            "threshold": self.threshold,
            "quantile": self.quantile,
            "layer_sizes": self.layer_sizes,
            "edges": self.edges,
            "voxel_thresholds": None if self.voxel_thresholds is None else self.voxel_thresholds.tolist(),
            "layer_thresholds": None if self.layer_thresholds is None else self.layer_thresholds.tolist(),
            "rings": None if self.rings is None else self.rings.tolist(),
            "value_knots": None if self.value_knots is None else self.value_knots.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadoutCalibration:
        """The calibration saved by :meth:`to_dict`."""
        return cls(**{k: v for k, v in d.items() if k != "name"})


#: a per-voxel threshold no deposit reaches (finite, so the state stays strict JSON)
_NEVER = 1e30


def _occupancy_quantile(generated: torch.Tensor, occupancy: torch.Tensor) -> torch.Tensor:
    """Per column of ``generated`` ``[N, K]``, its (1 − ``occupancy``) quantile (numpy's linear interpolation).

    A cut at it leaves the column non-zero in the share ``occupancy`` of the rows;
    a column with occupancy 0 (never non-zero in Geant4 here) gets :data:`_NEVER`.
    """
    srt = torch.sort(generated, dim=0).values
    pos = (1 - occupancy) * (len(generated) - 1)
    lo = pos.floor().long().clamp(0, len(generated) - 1)
    hi = (lo + 1).clamp_max(len(generated) - 1)
    frac = pos - lo
    q = srt.gather(0, lo[None])[0] * (1 - frac) + srt.gather(0, hi[None])[0] * frac
    return torch.where(occupancy == 0, torch.full_like(q, _NEVER), q)


def _ring_quantiles(ring: torch.Tensor, value: torch.Tensor, n_rings: int, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per ring, the ``levels`` quantiles of its values (numpy's linear interpolation) ``[n_rings, K]``, and its counts.

    One sort for all rings; a ring without values gets zeros (its count says so).
    """
    counts = torch.bincount(ring, minlength=n_rings)
    if len(value) == 0:
        return torch.zeros(n_rings, len(levels), dtype=torch.float64), counts
    order = torch.argsort(value)
    ring, value = ring[order], value[order]
    order = torch.argsort(ring, stable=True)  # by ring, each ring's values still ascending
    value = value[order]
    starts = counts.cumsum(0) - counts
    last = (counts - 1).clamp_min(0)[:, None]
    pos = levels[None, :] * last
    lo = pos.floor().long()
    frac = pos - lo
    first = starts[:, None]
    at_lo = (first + lo).clamp_max(len(value) - 1)
    at_hi = (first + (lo + 1).minimum(last)).clamp_max(len(value) - 1)
    q = value[at_lo] * (1 - frac) + value[at_hi] * frac
    q[counts == 0] = 0.0
    return q, counts
