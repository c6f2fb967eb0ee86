"""Per-layer shower moments as differentiable summary statistics of model-space voxels (for a critic)."""

from __future__ import annotations

import torch
from torch import nn

from physgen.data.geometry import CalorimeterGeometry
from physgen.data.transforms import Logit, Standardise

__all__ = ["ShowerMoments"]


class ShowerMoments(nn.Module):
    """Each layer's energy-weighted centroid and width in x, y and r ``[B, 6L]`` from model-space voxel fractions.

    As CaloGAN gave its discriminator sparsity and energy sums: a critic on hundreds of
    logit fractions barely sees the first moments of sparse early layers, where a plain
    WGAN's centroids came out biased. The map inverts the pipeline's last two steps (logit,
    then standardise) differentiably, so gradients reach the generator.

    Args:
        geometry: the showers' geometry (voxel centres and layers).
        logit, standardise: the pipeline's last two steps, fitted.
        n_voxels: the voxel columns at the front of the model space.
    """

    def __init__(self, geometry: CalorimeterGeometry, logit: Logit, standardise: Standardise, n_voxels: int):
        super().__init__()
        layer = torch.as_tensor(geometry.layer_index()[:n_voxels], dtype=torch.long)
        mean, sd = standardise.params()
        xs, ys, rs = (torch.as_tensor(v, dtype=torch.float32) for v in geometry.voxel_centres())
        scale = float(rs.max()) or 1.0
        n_layers = int(layer.max()) + 1
        onehot = torch.zeros(n_voxels, n_layers).index_put_((torch.arange(n_voxels), layer), torch.tensor(1.0))
        self.register_buffer("mean", mean[:n_voxels].float())
        self.register_buffer("sd", sd[:n_voxels].float())
        self.register_buffer("coords", torch.stack([xs, ys, rs]) / scale)  # [3, V], within [-1, 1]
        self.register_buffer("layers", onehot)
        self.alpha, self.scale = logit.alpha, logit.scale
        #: summary statistics per shower
        self.n_features = 6 * n_layers

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        u = torch.sigmoid(y * self.sd + self.mean)
        f = ((u - self.alpha) / (1 - 2 * self.alpha)).clamp_min(0) * self.scale  # Logit.inverse: share of its layer
        # softened denominators: an empty layer (total 0) must not give the critic huge slopes
        total = f @ self.layers + 0.1  # [B, L]; about 1.1 for a layer with energy
        feats = []
        for coord in self.coords:
            first = (f * coord) @ self.layers / total
            second = (f * coord * coord) @ self.layers / total
            feats += [first, torch.sqrt((second - first * first).clamp_min(0) + 1e-3)]
        return torch.cat(feats, 1)
