"""Calorimeter geometry: the CaloChallenge binning XML and CaloGAN's cartesian layers.

The CaloChallenge orders voxels layer → angle → radius: within layer ``l`` the
voxel of angular bin ``a`` and radial bin ``r`` sits at
``offset[l] + a * n_r[l] + r``. A layer whose ``r_edges`` is the single value
``"0"`` holds no voxels (dataset 1 has several). Angular bins cover −π … π
uniformly, as in the official ``XMLHandler`` and the Geant4 files of this project.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from physgen.errors import GeometryError

__all__ = ["Layer", "CalorimeterGeometry", "read_binning_xml", "official_binning"]

#: The four official CaloChallenge 2022 binnings shipped with physgen, by voxel count.
OFFICIAL_BINNINGS = {
    368: "binning_dataset_1_photons.xml",
    533: "binning_dataset_1_pions.xml",
    6480: "binning_dataset_2.xml",
    40500: "binning_dataset_3.xml",
}


@dataclass(frozen=True)
class Layer:
    """One readout layer.

    Polar layers (CaloChallenge) have ``r_edges`` in mm and ``n_alpha`` angular
    bins; cartesian layers (CaloGAN) have ``shape`` = (rows, columns) and
    optional cell sizes in mm.
    """

    r_edges: tuple[float, ...] = ()
    n_alpha: int = 1
    shape: tuple[int, int] | None = None
    cell_size_mm: tuple[float, float] | None = None

    @property
    def n_r(self) -> int:
        return max(len(self.r_edges) - 1, 0)

    @property
    def n_voxels(self) -> int:
        if self.shape is not None:
            return self.shape[0] * self.shape[1]
        return self.n_r * self.n_alpha


@dataclass(frozen=True)
class CalorimeterGeometry:
    """The readout of a calorimeter: its layers, in voxel order.

    Attributes:
        layers: one :class:`Layer` per readout layer, including empty ones, so
            layer ids match the CaloChallenge XML.
        kind: ``"polar"`` (r, α bins about the shower axis) or ``"cartesian"``.
        z_edges_mm: longitudinal layer boundaries if known (length ``n_layers + 1``).
        particle: particle name from the binning, if any.
    """

    layers: tuple[Layer, ...]
    kind: Literal["polar", "cartesian"] = "polar"
    z_edges_mm: tuple[float, ...] | None = None
    particle: str | None = None
    pid: int | None = None
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        offsets = [0]
        for layer in self.layers:
            offsets.append(offsets[-1] + layer.n_voxels)
        object.__setattr__(self, "_offsets", tuple(offsets))
        if self.z_edges_mm is not None and len(self.z_edges_mm) != len(self.layers) + 1:
            raise GeometryError(
                f"z_edges_mm has {len(self.z_edges_mm)} entries; expected n_layers + 1 = "
                f"{len(self.layers) + 1}"
            )

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_voxels(self) -> int:
        return self._offsets[-1]

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """Start index of each layer's voxels, plus the total at the end."""
        return self._offsets

    @property
    def layers_binned_in_alpha(self) -> list[int]:
        """Ids of polar layers with more than one angular bin (the evaluator's x/y-feature layers)."""
        return [i for i, la in enumerate(self.layers) if la.n_voxels > 0 and (la.shape is not None or la.n_alpha > 1)]

    @property
    def relevant_layers(self) -> list[int]:
        """Ids of the layers that hold voxels."""
        return [i for i, layer in enumerate(self.layers) if layer.n_voxels > 0]

    def layer_slice(self, layer: int) -> slice:
        return slice(self._offsets[layer], self._offsets[layer + 1])

    def layer_index(self) -> np.ndarray:
        """For each voxel, the id of its layer: int64 ``[n_voxels]``."""
        return np.repeat(np.arange(self.n_layers), [la.n_voxels for la in self.layers])

    def voxel_centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-voxel ``(x, y, r)`` centres in mm, ``[n_voxels]`` each.

        Polar: ``r`` is the radial bin centre, ``x = r cos α``, ``y = r sin α``
        with α the angular bin centre on −π … π, exactly as the CaloChallenge
        ``XMLHandler`` computes its ``eta``/``phi`` (a layer with one angular
        bin has α = 0, so x = r, y = 0; the evaluator computes x/y centres only
        for layers binned in α). Cartesian: cell centres relative to the layer
        centre, in mm if cell sizes are known, else in cell units.
        """
        xs, ys, rs = [], [], []
        for layer in self.layers:
            if layer.n_voxels == 0:
                continue
            if layer.shape is not None:
                rows, cols = layer.shape
                dy, dx = layer.cell_size_mm or (1.0, 1.0)
                yy, xx = np.meshgrid(
                    (np.arange(rows) - (rows - 1) / 2) * dy,
                    (np.arange(cols) - (cols - 1) / 2) * dx,
                    indexing="ij",
                )
                xs.append(xx.ravel())
                ys.append(yy.ravel())
                rs.append(np.hypot(xx, yy).ravel())
                continue
            edges = np.asarray(layer.r_edges, dtype=np.float64)
            r_mid = 0.5 * (edges[1:] + edges[:-1])
            a_edges = np.linspace(-math.pi, math.pi, layer.n_alpha + 1)
            a_mid = 0.5 * (a_edges[1:] + a_edges[:-1])
            aa, rr = np.meshgrid(a_mid, r_mid, indexing="ij")  # alpha-major, as voxels are
            xs.append((rr * np.cos(aa)).ravel())
            ys.append((rr * np.sin(aa)).ravel())
            rs.append(rr.ravel())
        if not xs:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(rs)

    @property
    def azimuthal_order(self) -> int:
        """Number of rotations about the shower axis that map every layer's angular bins onto themselves.

        The greatest common divisor of ``n_alpha`` over the layers binned in α (1 if none):
        dataset 2 and the Geant4 files here rotate in steps of one bin, a binning with 10 and
        16 bins only by half turns.
        """
        if self.kind != "polar":
            raise GeometryError("azimuthal symmetry is defined for polar (CaloChallenge) geometries only")
        return math.gcd(*[self.layers[i].n_alpha for i in self.layers_binned_in_alpha]) if self.layers_binned_in_alpha else 1

    def azimuthal_permutation(self, steps: int = 0, reflect: bool = False) -> np.ndarray:
        """Voxel gather index of a rotation (and optional reflection) about the shower axis.

        ``x[..., perm]`` is the shower ``x`` mirrored α → −α if ``reflect``, then rotated by
        ``steps · 2π / azimuthal_order``. For a particle entering along the axis of an
        azimuthally symmetric calorimeter, both map a shower onto an equally likely one.
        """
        order = self.azimuthal_order
        perm = []
        for layer, start in zip(self.layers, self._offsets, strict=False):
            n_a, n_r = layer.n_alpha, layer.n_r
            a = np.arange(n_a)
            if n_a > 1:
                a = (a - (steps % order) * (n_a // order)) % n_a  # the bin each new bin takes its energy from
                if reflect:
                    a = n_a - 1 - a
            perm.append(start + (a[:, None] * n_r + np.arange(n_r)[None, :]).ravel())
        return np.concatenate(perm) if perm else np.zeros(0, dtype=np.int64)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layers": [
                {
                    "r_edges": list(la.r_edges),
                    "n_alpha": la.n_alpha,
                    **({"shape": list(la.shape)} if la.shape is not None else {}),
                    **({"cell_size_mm": list(la.cell_size_mm)} if la.cell_size_mm else {}),
                }
                for la in self.layers
            ],
            "z_edges_mm": list(self.z_edges_mm) if self.z_edges_mm is not None else None,
            "particle": self.particle,
            "pid": self.pid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalorimeterGeometry:
        try:
            layers = tuple(
                Layer(
                    r_edges=tuple(float(v) for v in la.get("r_edges", ())),
                    n_alpha=int(la.get("n_alpha", 1)),
                    shape=tuple(la["shape"]) if la.get("shape") is not None else None,  # type: ignore[arg-type]
                    cell_size_mm=tuple(la["cell_size_mm"]) if la.get("cell_size_mm") else None,  # type: ignore[arg-type]
                )
                for la in d["layers"]
            )
            z = d.get("z_edges_mm")
            return cls(
                layers=layers,
                kind=d.get("kind", "polar"),
                z_edges_mm=tuple(float(v) for v in z) if z is not None else None,
                particle=d.get("particle"),
                pid=d.get("pid"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(f"geometry description is malformed: {exc}") from exc

    def to_xml(self) -> str:
        """The binning in the CaloChallenge XML format (polar geometries only)."""
        if self.kind != "polar":
            raise GeometryError("only polar (CaloChallenge) geometries have a binning XML")
        attrs = ""
        if self.pid is not None:
            attrs += f' pid="{self.pid}"'
        if self.particle is not None:
            attrs += f' name="{self.particle}"'
        lines = ["<Bins>", f"   <Bin{attrs}>"]
        for i, la in enumerate(self.layers):
            edges = ",".join(_fmt(v) for v in (la.r_edges or (0.0,)))
            lines.append(f'      <Layer id="{i}" r_edges="{edges}" n_bin_alpha="{la.n_alpha}" />')
        lines += ["   </Bin>", "</Bins>", ""]
        return "\n".join(lines)

    @classmethod
    def polar(
        cls,
        r_edges: list[float] | np.ndarray,
        n_alpha: int,
        n_layers: int,
        z_edges_mm: list[float] | np.ndarray | None = None,
        particle: str | None = None,
    ) -> CalorimeterGeometry:
        """Same radial and angular binning in every layer (the Geant4 files here)."""
        layer = Layer(r_edges=tuple(float(v) for v in r_edges), n_alpha=int(n_alpha))
        return cls(
            layers=(layer,) * int(n_layers),
            z_edges_mm=tuple(float(v) for v in z_edges_mm) if z_edges_mm is not None else None,
            particle=particle,
        )


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def read_binning_xml(source: str | Path, particle: str | None = None) -> CalorimeterGeometry:
    """Parse a CaloChallenge binning XML file.

    Args:
        source: path of the XML file.
        particle: which ``<Bin name=...>`` to use when the file has several.

    Raises:
        GeometryError: the file is not XML, has no ``<Bin>``/``<Layer>``, or a
            layer's ``r_edges``/``n_bin_alpha`` is missing or not numeric.
    """
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GeometryError(f"cannot read binning XML: {exc.strerror}", file=path) from exc
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise GeometryError(f"not a valid binning XML ({exc})", file=path) from exc
    bins = root.findall("Bin") if root.tag != "Bin" else [root]
    if not bins:
        raise GeometryError("no <Bin> element; expected <Bins><Bin><Layer .../>...", file=path)
    if particle is not None:
        named = [b for b in bins if b.get("name") == particle]
        if not named:
            names = [b.get("name") for b in bins]
            raise GeometryError(f"no <Bin name={particle!r}>; the file has {names}", file=path)
        bins = named
    elem = bins[0]
    layers: list[Layer] = []
    for i, lay in enumerate(elem.findall("Layer")):
        key = f"Layer id={lay.get('id', i)}"
        raw_edges = lay.get("r_edges")
        raw_alpha = lay.get("n_bin_alpha")
        if raw_edges is None or raw_alpha is None:
            missing = "r_edges" if raw_edges is None else "n_bin_alpha"
            raise GeometryError(f"attribute {missing!r} is missing", file=path, key=key)
        try:
            edges = tuple(float(v) for v in raw_edges.split(",") if v.strip() != "")
            n_alpha = int(raw_alpha)
        except ValueError as exc:
            raise GeometryError(
                f"r_edges must be comma-separated numbers and n_bin_alpha an integer; got "
                f"r_edges={raw_edges!r}, n_bin_alpha={raw_alpha!r}",
                file=path,
                key=key,
            ) from exc
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or n_alpha < 1:
            raise GeometryError(
                f"r_edges must increase and n_bin_alpha be ≥ 1; got {raw_edges!r}, {n_alpha}",
                file=path,
                key=key,
            )
        layers.append(Layer(r_edges=edges if len(edges) > 1 else (), n_alpha=n_alpha))
    if not layers:
        raise GeometryError("the <Bin> element has no <Layer> children", file=path)
    pid = elem.get("pid")
    return CalorimeterGeometry(
        layers=tuple(layers),
        particle=elem.get("name"),
        pid=int(pid) if pid is not None and pid.lstrip("-").isdigit() else None,
    )


def official_binning(n_voxels: int) -> CalorimeterGeometry | None:
    """The official CaloChallenge binning with this voxel count, if there is one."""
    name = OFFICIAL_BINNINGS.get(int(n_voxels))
    if name is None:
        return None
    with resources.as_file(resources.files("physgen.data") / "binning" / name) as p:
        return read_binning_xml(p)
