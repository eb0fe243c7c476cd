"""OSGDecoder: the small MLP from fused tri-plane features to density and colour features (§2.7)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FullyConnectedLayer

DECODER_ACTIVATIONS = ("none", "sigmoid", "lrelu")


class OSGDecoder(nn.Module):
    """features [N, P, M, C] (P planes, averaged) or [N, M, C] -> {'rgb' [N, M, out], 'sigma' [N, M, 1]}.

    net = FC(C→64) → Softplus → FC(64→1+out); σ is the raw first output. View directions are ignored.
    """

    def __init__(self, n_features: int, options: dict):
        super().__init__()
        self.hidden_dim = 64
        self.activation = options.get("decoder_activation", "none")
        if self.activation not in DECODER_ACTIVATIONS:
            raise ValueError(f"rendering_kwargs.decoder_activation must be one of {DECODER_ACTIVATIONS}, "
                             f"got {self.activation!r}")
        lr_mul = options.get("decoder_lr_mul", 1)
        out_dim = options["decoder_output_dim"]
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + out_dim, lr_multiplier=lr_mul),
        )

    def forward(self, sampled_features: torch.Tensor, ray_directions=None) -> dict:
        x = sampled_features.mean(1) if sampled_features.ndim == 4 else sampled_features
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb, sigma = x[..., 1:], x[..., 0:1]
        if self.activation == "sigmoid":
            rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        elif self.activation == "lrelu":
            rgb = F.leaky_relu(rgb, 0.2) * math.sqrt(2)
        return {"rgb": rgb, "sigma": sigma}
