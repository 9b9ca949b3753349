"""Saved spikes recomputed from the membrane potential instead of being stored for backward.

A layer that consumes a neuron's spikes ``S [T, ...]`` (a convolution, a linear layer, a product in attention) saves
``S`` for its weight gradient, while the neuron saves its charged potential ``H`` for the surrogate. Since
``S = (H >= V_th)`` exactly, inside :func:`recompute_saved_spikes` every tensor autograd saves that views a neuron's
spike output is packed as a reference to that neuron's ``H`` and rebuilt by one comparison when backward needs it. A
conv-BN-LIF chain then stores two activation tensors per layer instead of three; gradients stay bit-equal.

Guards: only spikes of a neuron run with gradients enabled on this thread are recognised, a spike tensor modified
in place since the neuron made it (``_version`` changed) is stored as usual, and nothing is registered while
``torch.compile`` traces (the compiler plans its own saved tensors).
"""
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

__all__ = ['recompute_saved_spikes', 'register_spikes', 'RecomputeSpikesMixin']


@dataclass(eq=False)
class _SpikeSource:
    """A neuron's spike output (weakly held) and what rebuilds it: ``ge(h, threshold)`` cast to ``dtype``."""
    spikes: weakref.ref
    version: int
    h: torch.Tensor
    threshold: float
    dtype: torch.dtype
    rebuilt: Optional[weakref.ref] = None

    def rebuild(self) -> torch.Tensor:
        """The spike tensor (the same strides as ``h``), shared by every saved view unpacked while it lives."""
        spikes = None if self.rebuilt is None else self.rebuilt()
        if spikes is None:
            spikes = torch.empty_like(self.h, dtype=self.dtype)
            h = self.h if self.h.dtype in (torch.float32, torch.float64) else self.h.float()  # the kernels' compare
            torch.ge(h, self.threshold, out=spikes)
            self.rebuilt = weakref.ref(spikes)
        return spikes


@dataclass(frozen=True)
class _PackedSpikes:
    """A saved view of a neuron's spikes: its source and the view's geometry in the spike tensor's storage."""
    source: _SpikeSource
    size: torch.Size
    stride: tuple
    offset: int


_local = threading.local()


def _sources() -> Optional[dict]:
    """storage address -> :class:`_SpikeSource` of the innermost active context on this thread, else None."""
    return getattr(_local, 'sources', None)


def register_spikes(spikes: torch.Tensor, h: torch.Tensor, threshold: float) -> None:
    """Record that ``spikes == (h >= threshold)`` (cast to ``spikes.dtype``) for the active context, if any.

    ``spikes`` must have the shape and strides of ``h`` and start its storage; otherwise (and outside a context,
    without a graph, or while compiling) nothing is recorded and consumers save ``spikes`` as usual.
    """
    sources = _sources()
    if (sources is None or not spikes.requires_grad or torch.compiler.is_compiling() or spikes.shape != h.shape
            or spikes.stride() != h.stride() or spikes.storage_offset() != 0 or h.storage_offset() != 0):
        return
    key = spikes.untyped_storage().data_ptr()

    def forget(_, key=key):
        if sources.get(key) is source:
            del sources[key]

    source = _SpikeSource(weakref.ref(spikes, forget), spikes._version, h, float(threshold), spikes.dtype)
    sources[key] = source


def _pack(t: torch.Tensor):
    try:
        source = _sources().get(t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # a tensor without strided storage (sparse, nested, wrapped)
        return t
    if source is None or t.dtype != source.dtype:
        return t
    spikes = source.spikes()
    if spikes is None or spikes._version != source.version:
        return t
    return _PackedSpikes(source, t.shape, t.stride(), t.storage_offset())


def _unpack(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    return packed.source.rebuild().as_strided(packed.size, packed.stride, packed.offset)


@contextmanager
def recompute_saved_spikes(enabled: bool = True) -> Iterator[None]:
    """Within this context, spikes that autograd saves are rebuilt from the neurons' ``H`` in backward (see the
    module docstring). The models' ``forward`` enters it (see :class:`RecomputeSpikesMixin`); wrap a custom network's
    forward in it for the same saving. A no-op when ``enabled`` is False, without gradients, while ``torch.compile``
    traces, and inside ``torch.func`` transforms (which forbid saved-tensor hooks)."""
    if not enabled or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        yield
        return
    hooks = torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)
    try:
        hooks.__enter__()
    except RuntimeError:  # a torch.func transform is active
        hooks = None
    if hooks is None:
        yield
        return
    outer = _sources()
    _local.sources = {} if outer is None else outer
    try:
        yield
    finally:
        _local.sources = outer
        hooks.__exit__(None, None, None)


class RecomputeSpikesMixin:
    """The models' switch for :func:`recompute_saved_spikes` around ``forward`` (like timm's
    ``set_grad_checkpointing``). ``None`` (the default): on for CUDA inputs, where memory is what limits training and
    the comparison costs microseconds; off on the CPU, where it costs 1-4% of a training step."""

    recompute_spikes: Optional[bool] = None

    def set_recompute_spikes(self, enable: Optional[bool] = True) -> None:
        """True: always rebuild saved spikes from H; False: store them; None: on CUDA only."""
        self.recompute_spikes = enable

    def _saved_spikes_context(self, x: torch.Tensor):
        enable = self.recompute_spikes
        return recompute_saved_spikes(torch.is_tensor(x) and x.is_cuda if enable is None else enable)
