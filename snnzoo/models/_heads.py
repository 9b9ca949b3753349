"""Classifier pieces the model families share: the head on pooled per-step features, timm's classifier API and feature
API on the per-step stream, and the originals' truncated-normal initialisation.

The time axis in timm's contract: a model's per-step stream ``[T, B, C, H, W]`` (:meth:`forward_stream`) is what its
head reads; timm's ``forward_features`` / ``forward_intermediates`` return it averaged over T, ``[B, C, H, W]`` (a
firing rate where the stream holds spikes, a mean membrane input where it is real-valued), or the stream itself with
``return_per_step=True`` (for per-step losses such as TET). ``forward_head`` takes either.
"""
from typing import Iterator, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices

from ..layers.grad_modes import GradModeMixin
from ..layers.saved_spikes import RecomputeSpikesMixin
from ..layers.temporal import check_input_dtype, empty_batch_output

__all__ = ['LinearHeadMixin', 'create_classifier', 'check_global_pool', 'init_trunc_normal_', 'is_per_step',
           'pooled_head', 'unpooled', 'spiking_head_input']


def init_trunc_normal_(m: nn.Module, types: Union[Type[nn.Module], Tuple[Type[nn.Module], ...]] = nn.Linear) -> None:
    """The originals' ``_init_weights``, for ``model.apply``: a module of ``types`` gets its weight from a truncated
    normal (std 0.02) and a zero bias; every other module keeps PyTorch's init."""
    if isinstance(m, types):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def is_per_step(x: torch.Tensor, rank: int) -> bool:
    """Whether ``x`` is per step (rank ``rank``, T first) rather than averaged over T. A traced FX value is: FX traces
    ``forward``, which feeds the head the per-step stream."""
    return isinstance(x, torch.fx.Proxy) or x.dim() == rank


def pooled_head(x: torch.Tensor, head_drop: nn.Module, head: nn.Module, pre_logits: bool = False,
                return_per_step: bool = False) -> torch.Tensor:
    """Pooled per-step features ``[T, B, C]`` -> mean over T (unless ``return_per_step``) -> ``head_drop`` -> ``head``:
    logits ``[B, num_classes]`` (``[T, B, num_classes]`` per step); ``pre_logits``: the features ``[B, C]`` instead.
    Features already averaged over T, ``[B, C]``, go straight to the head."""
    per_step = is_per_step(x, 3)
    if per_step and not return_per_step:
        x = x.mean(0)
    elif not per_step and return_per_step:
        raise ValueError("per-step logits need the per-step features: pass forward_features(x, return_per_step=True)")
    x = head_drop(x)
    return x if pre_logits else head(x)


def spiking_head_input(x: torch.Tensor, T: int) -> torch.Tensor:
    """The input of a head that fires a neuron per step (SDT, Meta-SpikeFormer): the stream ``[T, B, C, H, W]`` pooled
    over space to ``[T, B, C]``; time-averaged features ``[B, C, H, W]`` are pooled and held constant for ``T`` steps."""
    x = x.flatten(-2).mean(-1)
    return x if is_per_step(x, 3) else x.expand(T, -1, -1)


def check_global_pool(global_pool: str, num_classes: int, name: str) -> str:
    """``'avg'`` (mean over space, then over T) or ``''`` (no pooling: the head returns the unpooled features, so only
    with ``num_classes=0``)."""
    if global_pool not in ('avg', ''):
        raise ValueError(f"{name} pools by averaging over space and time: global_pool must be 'avg' or '' "
                         f"(no pooling), "
                         f"got {global_pool!r}")
    if global_pool == '' and num_classes > 0:
        raise ValueError(f"{name}: global_pool='' (unpooled features) needs num_classes=0, got {num_classes}")
    return global_pool


def create_classifier(model: nn.Module, in_features: int, num_classes: int) -> nn.Module:
    """``nn.Linear(in_features, num_classes)`` on the device and dtype of ``model``'s parameters and in its train / eval
    mode (``nn.Identity`` for 0 classes), so that ``reset_classifier`` keeps a model where it is."""
    if num_classes <= 0:
        return nn.Identity()
    ref = next(model.parameters(), None)
    dd = {} if ref is None else dict(device=ref.device, dtype=ref.dtype)
    return nn.Linear(in_features, num_classes, **dd).train(model.training)


def unpooled(x: torch.Tensor, return_per_step: bool = False) -> torch.Tensor:
    """The unpooled features of ``forward_head`` with ``global_pool=''``: a per-step stream ``[T, B, C, H, W]`` averaged
    over T (unless ``return_per_step``); ``[B, C, H, W]`` unchanged."""
    return x.mean(0) if is_per_step(x, 5) and not return_per_step else x


class LinearHeadMixin(GradModeMixin, RecomputeSpikesMixin):
    """timm's classifier and feature API for a model with ``forward_levels``, ``forward_head(x, pre_logits,
    return_per_step)``, ``num_features``, ``head_hidden_size``, ``feature_info`` and a Linear classifier ``head``
    (``nn.Identity`` for 0 classes).

    ``forward_levels(x)`` yields the per-step output ``[T, B, C, H, W]`` of every feature level in ``feature_info``, in
    order; the last one is the stream the head reads. ``forward_stream``, ``forward_features``,
    ``forward_intermediates`` and ``forward`` are built on it, so they compute the same numbers.
    """
    global_pool = 'avg'

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        self.num_classes = num_classes
        self.head = create_classifier(self, self.head_hidden_size, num_classes)

    def forward_levels(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def forward_stream(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> the per-step stream the head reads, ``[T, B, C', H', W']``."""
        for x in self.forward_levels(x):
            pass
        return x

    def forward_features(self, x: torch.Tensor, return_per_step: bool = False) -> torch.Tensor:
        """timm's unpooled features: :meth:`forward_stream` averaged over T, ``[B, C', H', W']`` (with
        ``return_per_step``: the stream itself, ``[T, B, C', H', W']``)."""
        x = self.forward_stream(x)
        return x if return_per_step else x.mean(0)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False, return_per_step: bool = False):
        """timm's feature API: the outputs of the levels in ``feature_info`` selected by ``indices`` (None: all; an int
        n: the last n), each averaged over T ``[B, C, H, W]`` (``[T, B, C, H, W]`` with ``return_per_step``), and the
        final features (= ``forward_features``) unless ``intermediates_only``. ``norm`` has no effect (no final
        norm)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"{type(self).__name__} produces NCHW feature maps only, got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        for i, x in enumerate(self.forward_levels(x)):
            if i in take_indices:
                intermediates.append(x if return_per_step else x.mean(0))
            if i == max_index and (stop_early or intermediates_only):
                break
        if intermediates_only:
            return intermediates
        return (x if return_per_step else x.mean(0)), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the levels after the last wanted feature (and, with ``prune_head``, the classifier); returns the
        absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self._prune_levels(max_index)
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def _prune_levels(self, last: int) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_per_step: bool = False):
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> logits ``[B, num_classes]`` (``[T, B, num_classes]`` with
        ``return_per_step``). See :meth:`set_recompute_spikes` for the spikes saved for backward."""
        if isinstance(return_per_step, torch.fx.Proxy):  # FX traces forward(x): the default
            return_per_step = False
        check_input_dtype(self, x)
        if isinstance(x, torch.Tensor) and x.dim() in (4, 5) and x.shape[0] == 0:
            return empty_batch_output(self, x, return_per_step)
        with self._saved_spikes_context(x):
            return self.forward_head(self.forward_stream(x), return_per_step=return_per_step)
