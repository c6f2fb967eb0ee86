"""Features that come in consecutive groups, such as a calorimeter's layers of voxels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["FeatureGroups"]


class FeatureGroups:
    """Features in consecutive groups (a calorimeter's layers of voxels): sums over groups, and back.

    Runs of equal-sized groups are reshaped rather than indexed, which on a CPU is about
    ten times faster than index_add/gather for 45 groups of 144 features; sums agree to rounding.
    The names speak of layers and voxels, the common case.
    """

    def __init__(self, layer_sizes: Sequence[int]):
        self.sizes = [int(s) for s in layer_sizes]
        self.n_voxels = sum(self.sizes)
        self.runs: list[tuple[int, int, int, int]] = []  # (first voxel, first layer, layers, size)
        voxel = 0
        for layer, size in enumerate(self.sizes):
            if self.runs and self.runs[-1][3] == size:
                v0, l0, count, _ = self.runs[-1]
                self.runs[-1] = (v0, l0, count + 1, size)
            else:
                self.runs.append((voxel, layer, 1, size))
            voxel += size

    def __len__(self) -> int:
        return len(self.sizes)

    def sums(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, V]`` voxels → ``[N, L]`` layer sums."""
        parts = [x[:, v0 : v0 + count * size].reshape(len(x), count, size).sum(-1) for v0, _, count, size in self.runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def scale_(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Multiply each voxel of ``x`` ``[N, V]`` by its layer's ``factor`` ``[N, L]``, in place (no ``[N, V]`` temporary)."""
        for v0, l0, count, size in self.runs:
            x[:, v0 : v0 + count * size].view(len(x), count, size).mul_(factor[:, l0 : l0 + count, None])
        return x

    def add_(self, x: torch.Tensor, per_layer: torch.Tensor) -> torch.Tensor:
        """Add to each voxel of ``x`` ``[N, V]`` its layer's value of ``per_layer`` ``[N, L]``, in place."""
        for v0, l0, count, size in self.runs:
            x[:, v0 : v0 + count * size].view(len(x), count, size).add_(per_layer[:, l0 : l0 + count, None])
        return x

    def keep_largest_(self, cut: torch.Tensor, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """In the layers ``where`` ``[N, L]`` is true, set ``cut``'s voxel at ``x``'s largest to ``x``'s value (in place).

        Only the chosen (shower, layer) pairs are searched: a few layers per shower.
        """
        for v0, l0, count, size in self.runs:
            rows, layer = where[:, l0 : l0 + count].nonzero(as_tuple=True)
            if len(rows) == 0:
                continue
            block_x = x[:, v0 : v0 + count * size].view(len(x), count, size)
            block_cut = cut[:, v0 : v0 + count * size].view(len(x), count, size)
            top = block_x[rows, layer].argmax(-1)
            block_cut[rows, layer, top] = block_x[rows, layer, top]
        return cut

    def per_voxel(self, e: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` per-layer values → ``[N, V]``: each voxel gets its layer's."""
        parts = [e[:, l0 : l0 + count, None].expand(len(e), count, size).reshape(len(e), count * size) for _, l0, count, size in self.runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)
