"""Spiking MLPs of the spiking Transformers: two 1x1 projections, each followed by BatchNorm, with LIF neurons.

Input ``[T, B, C, H, W]`` or ``[T, B, C, N]`` (channels first), output the same with ``out_features`` channels. With
hidden width M = ``hidden_features`` and W1: C -> M, W2: M -> C_out (1x1 projections with bias):

    post-activation (Spikformer):    out = LIF(BN(W2 LIF(BN(W1 x + b1)) + b2))        spikes
    pre-activation  (Spikingformer): out = BN(W2 LIF(BN(W1 LIF(x) + b1)) + b2)        real-valued (membrane shortcut)

Projections and BatchNorms act on ``[T*B, C, N]`` (statistics over T, B and tokens), neurons over T.
"""
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .neuron import LIFNode
from .projection import apply_projection, create_projection

__all__ = ['SpikingMlp']


class SpikingMlp(nn.Module):
    """Spiking MLP ``[T, B, C, *spatial] -> [T, B, out_features, *spatial]``.

    Args:
        in_features: input channels C.
        hidden_features: hidden channels (default C).
        out_features: output channels (default C).
        preact: Spikingformer's pre-activation order (each neuron precedes its projection; no neuron at the end).
        proj_type: how the projections are stored: ``'conv2d'`` (Spikformer's ImageNet file, Spikingformer),
            ``'conv1d'`` (Spikformer's CIFAR10-DVS file) or ``'linear'`` (Spikformer's CIFAR file); the same
            computation (see :mod:`snnzoo.layers.projection`).
        neuron_layer: neuron factory called with no argument (default: LIF with tau 2 and detached reset).

    Submodules ``fc1, fc1_bn, fc1_lif, fc2, fc2_bn, fc2_lif`` (BatchNorms are ``BatchNorm1d``); in the pre-activation
    order ``fc{i}_lif`` is the neuron feeding ``fc{i}``.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 preact: bool = False, proj_type: str = 'conv2d',
                 neuron_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        neuron_layer = neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.in_features = in_features
        self.preact = bool(preact)
        self.fc1 = create_projection(proj_type, in_features, hidden_features)
        self.fc1_bn = nn.BatchNorm1d(hidden_features)
        self.fc1_lif = neuron_layer()
        self.fc2 = create_projection(proj_type, hidden_features, out_features)
        self.fc2_bn = nn.BatchNorm1d(out_features)
        self.fc2_lif = neuron_layer()

    def _proj_bn(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """``BN(W_i x + b_i)`` on ``x [T, B, C, N]`` (flattened to ``[T*B, C, N]`` and back)."""
        y = getattr(self, f'fc{i}_bn')(apply_projection(getattr(self, f'fc{i}'), x.flatten(0, 1)))
        return y.unflatten(0, x.shape[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[2] != self.in_features:
            raise ValueError(f"{type(self).__name__}(in_features={self.in_features}) expects "
                             f"[T, B, {self.in_features}, H, W] or [T, B, {self.in_features}, N], "
                             f"got shape {tuple(x.shape)}")
        T, B, C = x.shape[:3]
        spatial = x.shape[3:]
        x = x.reshape(T, B, C, -1)
        if self.preact:
            x = self._proj_bn(self.fc1_lif(x), 1)
            x = self._proj_bn(self.fc2_lif(x), 2)
        else:
            x = self.fc1_lif(self._proj_bn(x, 1))
            x = self.fc2_lif(self._proj_bn(x, 2))
        return x.reshape(T, B, -1, *spatial)

    def extra_repr(self) -> str:
        return f"preact={self.preact}"
