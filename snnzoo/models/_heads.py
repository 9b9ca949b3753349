"""Classifier pieces the model families share: the head on pooled per-step features, timm's classifier API on a
Linear ``head``, and the originals' truncated-normal initialisation."""
from typing import Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..layers.saved_spikes import RecomputeSpikesMixin

__all__ = ['LinearHeadMixin', 'init_trunc_normal_', 'pooled_head']


def init_trunc_normal_(m: nn.Module, types: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]] = nn.Linear) -> None:
    """The originals' ``_init_weights``, for ``model.apply``: a module of ``types`` gets its weight from a truncated
    normal (std 0.02) and a zero bias; every other module keeps PyTorch's init."""
    if isinstance(m, types):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def pooled_head(x: torch.Tensor, head_drop: nn.Module, head: nn.Module, pre_logits: bool = False,
                return_per_step: bool = False) -> torch.Tensor:
    """Pooled per-step features ``[T, B, C]`` -> mean over T (unless ``return_per_step``) -> ``head_drop`` -> ``head``:
    logits ``[B, num_classes]`` (``[T, B, num_classes]`` per step); ``pre_logits``: the features ``[B, C]`` instead."""
    if not return_per_step:
        x = x.mean(0)
    x = head_drop(x)
    return x if pre_logits else head(x)


class LinearHeadMixin(RecomputeSpikesMixin):
    """timm's classifier API and ``forward`` for a model with ``forward_features``, ``forward_head(x, pre_logits,
    return_per_step)``, ``num_features`` and a Linear classifier ``head`` (``nn.Identity`` for 0 classes)."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, return_per_step: bool = False):
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> logits ``[B, num_classes]`` (``[T, B, num_classes]`` with
        ``return_per_step``). See :meth:`set_recompute_spikes` for the spikes saved for backward."""
        with self._saved_spikes_context(x):
            return self.forward_head(self.forward_features(x), return_per_step=return_per_step)
