"""The timm model protocol shared by the spiking ResNets (SEW-ResNet, MS-ResNet): four stages ``layer1..4`` on the
per-step stream ``[T, B, C, H, W]``, a stem, and a linear classifier ``fc`` on features averaged over space and T."""
from typing import List, Optional, Union

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from ..layers.grad_modes import GradModeMixin
from ..layers.saved_spikes import RecomputeSpikesMixin
from ..layers.temporal import check_input_dtype, empty_batch_output
from ._heads import check_global_pool, create_classifier, pooled_head, unpooled

__all__ = ['SpikingResNetBase']


def _select(x: torch.Tensor, return_per_step: bool) -> torch.Tensor:
    """A per-step feature map ``[T, B, C, H, W]`` as a timm intermediate: its mean over T ``[B, C, H, W]``."""
    return x if return_per_step else x.mean(0)


class SpikingResNetBase(GradModeMixin, RecomputeSpikesMixin, nn.Module):
    """Subclasses define ``fc``, ``head_drop``, ``num_features``, ``head_hidden_size``, ``_stem(x)`` (input -> feature
    0, ``[T, B, C, H/2, W/2]``) and ``layer1..4``, and may override ``_post_stem`` (e.g. a max-pool), ``_stage_input``
    and ``_final`` (after the last stage); networks of another shape (the DVS nets) override ``forward_stream``,
    ``_stages``, pruning and the head.

    timm's contract on the time axis: ``forward_stream`` is the per-step output ``[T, B, C, H, W]`` the head reads;
    ``forward_features`` / ``forward_intermediates`` average it over T (``return_per_step=True``: per step).
    """
    global_pool = 'avg'

    def _stages(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _post_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _stage_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The input of stage ``index`` (1-based) from the previous output, e.g. in another memory layout."""
        return x

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output -> the features the head reads."""
        return x

    def _prune_post_stem(self) -> None:
        """Make ``_post_stem`` the identity (pruning to the stem's feature)."""

    def _prune_final(self) -> None:
        """Make ``_final`` the identity (pruning with ``prune_norm``)."""

    def forward_stream(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> the per-step features ``[T, B, C, H/32, W/32]``."""
        x = self._post_stem(self._stem(x))
        for i, stage in enumerate(self._stages(), start=1):
            x = stage(self._stage_input(i, x))
        return self._final(x)

    def forward_features(self, x: torch.Tensor, return_per_step: bool = False) -> torch.Tensor:
        """timm's unpooled features: :meth:`forward_stream` averaged over T ``[B, C, H, W]`` (``return_per_step``:
        the per-step stream)."""
        x = self.forward_stream(x)
        return x if return_per_step else x.mean(0)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, return_per_step: bool = False) -> torch.Tensor:
        """``[T, B, C, H, W]`` (or its mean over T ``[B, C, H, W]``) -> logits ``[B, num_classes]`` (``[T, B,
        num_classes]`` with ``return_per_step``); ``pre_logits``: the pooled features instead; ``global_pool=''``:
        the unpooled features."""
        if not self.global_pool:
            return unpooled(x, return_per_step)
        return pooled_head(x.mean((-2, -1)), self.head_drop, self.fc, pre_logits, return_per_step)

    def forward(self, x: torch.Tensor, return_per_step: bool = False) -> torch.Tensor:
        """See :meth:`set_recompute_spikes` for the spikes saved for backward."""
        if isinstance(return_per_step, torch.fx.Proxy):  # FX traces forward(x): the default
            return_per_step = False
        check_input_dtype(self, x)
        if isinstance(x, torch.Tensor) and x.dim() in (4, 5) and x.shape[0] == 0:
            return empty_batch_output(self, x, return_per_step)
        with self._saved_spikes_context(x):
            return self.forward_head(self.forward_stream(x), return_per_step=return_per_step)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False, return_per_step: bool = False):
        """timm's feature API. Features 0, 1, ...: the stem's output (stride 2) and the stages' outputs (ImageNet nets:
        strides 4..32), each as its mean over T ``[B, C, H, W]``, or per step ``[T, B, C, H, W]`` with
        ``return_per_step``; the final output equals ``forward_features``."""
        if output_fmt != 'NCHW':
            raise ValueError(f"{type(self).__name__} produces NCHW feature maps only, got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(1 + len(self._stages()), indices)
        x = self._stem(x)
        intermediates = [_select(x, return_per_step)] if 0 in take_indices else []
        x = self._post_stem(x)
        stages = self._stages()[:max_index] if stop_early else self._stages()
        for i, stage in enumerate(stages, start=1):
            x = stage(self._stage_input(i, x))
            if i in take_indices:
                intermediates.append(_select(x, return_per_step))
        if intermediates_only:
            return intermediates
        return _select(self._final(x), return_per_step), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last wanted feature (and the classifier; with ``prune_norm``, what ``_final``
        adds), so that ``forward_features`` ends at that feature; returns the absolute indices."""
        take_indices, max_index = feature_take_indices(5, indices)
        for i in range(max_index + 1, 5):
            setattr(self, f'layer{i}', nn.Identity())
        if max_index == 0:
            self._prune_post_stem()
        if prune_norm:
            self._prune_final()
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        self.num_classes = num_classes
        self.fc = create_classifier(self, self.head_hidden_size, num_classes)
