"""Training losses on states ``(B, C, H, W)``.

- ``trainl2``: per channel c a learned log-variance ``s_c`` (initialised 0):
  ``L = mean_{b,c}( mean_{h,w}((y_hat - y)^2) / exp(s_c) + s_c )``.
- ``l2``: plain mean squared error.

With latitude weights ``w_h`` (mean 1), ``mean_{h,w}`` becomes the weighted mean
``mean_{h,w}(w_h (y_hat - y)^2)``.
"""

import torch
from torch import nn


class _SpatialMSE(nn.Module):
    def __init__(self, lat_weights: torch.Tensor | None = None):
        super().__init__()
        if lat_weights is None:
            self.lat_weights = None
        else:
            self.register_buffer(
                "lat_weights", torch.as_tensor(lat_weights, dtype=torch.float32), persistent=False
            )

    def channel_mse(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` pair -> ``(B, C)`` (latitude-weighted) spatial mean squared error."""
        sq = (pred.float() - target.float()) ** 2
        if self.lat_weights is not None:
            sq = sq * self.lat_weights.view(1, 1, -1, 1)
        return sq.mean(dim=(-2, -1))


class TrainL2Loss(_SpatialMSE):
    """``trainl2``: MSE per channel scaled by a learned variance, ``log_var`` of shape ``(C,)``."""

    def __init__(self, n_channels: int, lat_weights: torch.Tensor | None = None):
        super().__init__(lat_weights)
        self.log_var = nn.Parameter(torch.zeros(n_channels))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.channel_mse(pred, target) / self.log_var.exp() + self.log_var).mean()


class L2Loss(_SpatialMSE):
    """``l2``: mean squared error over batch, channels and grid."""

    def __init__(self, n_channels: int, lat_weights: torch.Tensor | None = None):
        super().__init__(lat_weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.channel_mse(pred, target).mean()


LOSSES = {"trainl2": TrainL2Loss, "l2": L2Loss}
