"""The calorimeter's azimuthal symmetry: the orbits of its voxels, and training-set augmentation.

A particle that enters along the axis of an azimuthally symmetric calorimeter (the
CaloChallenge sets, the Geant4 files of this project) makes showers whose distribution
does not change when every shower is rotated about that axis or mirrored in a plane
through it. On a polar readout the rotations by whole angular bins and the mirrors
α → −α permute voxels exactly, so each training shower stands for up to
``2 · azimuthal_order`` distinct, equally likely showers (8 for 4 angular bins, 32 for
dataset 2's 16), at no simulation cost. CaloDiffusion's cylindrical convolutions build
the same symmetry into the network; this builds it into the data, for every family.
"""

from __future__ import annotations

import numpy as np
import torch

from physgen.data.container import Data
from physgen.data.geometry import CalorimeterGeometry
from physgen.data.rows import PermutedRows, PermutedStream, Rows
from physgen.errors import ConfigError, InvalidDataError

__all__ = ["azimuthal_copies", "azimuthal_orbits", "azimuthal_rows"]


def azimuthal_orbits(geometry: CalorimeterGeometry | None, n_voxels: int) -> torch.Tensor | None:
    """Per voxel, the id (0…G−1, in voxel order) of its orbit under the rotations and mirrors (its ring).

    None where there is no polar geometry of ``n_voxels`` voxels with more than one rotation.
    """
    if geometry is None or geometry.kind != "polar" or geometry.n_voxels != n_voxels or geometry.azimuthal_order < 2:
        return None
    perms = torch.stack([
        torch.as_tensor(geometry.azimuthal_permutation(k, m), dtype=torch.long)
        for k in range(geometry.azimuthal_order) for m in (False, True)
    ])
    return torch.unique(perms.min(0).values, return_inverse=True)[1]  # the orbit's first voxel, relabelled 0…G−1


def azimuthal_rows(data: Data | Rows, copies: int, seed: int = 0) -> Rows:
    """``data`` and ``copies − 1`` rotated or mirrored versions of each shower, gathered batch by batch.

    Each shower's versions are distinct elements of the symmetry group (rotations by whole
    angular bins, with and without the mirror α → −α), drawn at random per shower; rows
    ``0 … N−1`` are ``data`` itself. Conditions and aux columns are the shower's. Nothing is
    copied: a :class:`~physgen.data.rows.PermutedRows` gathers the voxels when the training
    loop asks for a batch. ``copies=1`` gives the rows of ``data`` as they are, whatever its kind.
    A streamed set (:class:`~physgen.io.rows.FileRows`) is read ``copies`` times an epoch, each
    shower rotated or mirrored at random on every read after the first
    (:class:`~physgen.data.rows.PermutedStream`).

    Raises:
        InvalidDataError: ``data`` is not calorimeter data with a polar geometry binned in α.
        ConfigError: ``copies`` is not between 1 and the group's size.
    """
    streamed = isinstance(data, Rows)
    if copies == 1:
        return data if streamed else Rows(data)
    events = data.data if streamed else data
    geometry = events.geometry
    if events.schema.kind != "calorimeter" or geometry is None or geometry.kind != "polar" or not geometry.layers_binned_in_alpha:
        raise InvalidDataError(
            "azimuthal augmentation needs calorimeter data with a polar geometry binned in alpha; "
            f"got kind={events.schema.kind!r}, geometry={'none' if geometry is None else geometry.kind}"
        )
    order = geometry.azimuthal_order
    size = 2 * order  # rotations, each with and without the mirror
    if not 1 <= copies <= size:
        raise ConfigError(f"augment copies must be in [1, {size}] for {order} rotations and their mirrors; got {copies}", where="train", key="augment")
    perms = torch.stack([torch.from_numpy(geometry.azimuthal_permutation(k % order, reflect=k >= order)) for k in range(size)])
    if streamed:
        return PermutedStream(data, perms, copies, seed)
    rng = np.random.default_rng(seed)
    # per shower, the identity (element 0) and copies - 1 distinct non-identity elements
    others = rng.permuted(np.tile(np.arange(1, size), (len(data), 1)), axis=1)[:, : copies - 1]
    return PermutedRows(data, perms, np.concatenate([np.zeros((len(data), 1), dtype=np.int64), others], 1))


def azimuthal_copies(data: Data, copies: int, seed: int = 0) -> Data:
    """The rows of :func:`azimuthal_rows` as one :class:`Data`: ``copies`` times the memory (small sets, inspection).

    Training does not need this: ``augment = k`` gathers each batch's versions as it goes.
    """
    rows = azimuthal_rows(data, copies, seed)
    return rows.materialise() if isinstance(rows, PermutedRows) else data
