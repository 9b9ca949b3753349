"""Inference fusion: BatchNorm folded into the convolution or linear layer that feeds it.

For an eval-mode BatchNorm with running statistics (mu, sigma^2), affine (gamma, beta) and eps after a layer
y = W x + b:

    BN(y) = s (W x + b - mu) + beta,   s = gamma / sqrt(sigma^2 + eps)
          = W' x + b',                 W' = s W (per output channel),  b' = s (b - mu) + beta

exact up to rounding (the folded parameters are computed in float64 and rounded once to the layer's dtype).
"""
import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ._trace import DataflowTrace

__all__ = ['fold_bn', 'fuse', 'find_conv_bn_pairs']

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FUNCTIONAL = frozenset({'conv1d', 'conv2d', 'conv3d', 'linear'})


def fold_bn(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.modules.batchnorm._BatchNorm
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W', b') of ``bn(layer(x))`` for a layer with ``weight`` ``[C_out, ...]`` and ``bias`` (None: 0)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot fold {bn}: it keeps no running statistics (track_running_stats=False), so its "
                         f"output depends on the batch; fold only BatchNorms that have running statistics")
    if bn.num_features != weight.shape[0]:
        raise ValueError(f"cannot fold {bn} into a layer with {weight.shape[0]} output channels")
    w64 = weight.detach().double()
    b64 = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device) if bias is None \
        else bias.detach().double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale + (b64 * scale)
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    w = (w64 * scale.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
    return w, shift.to(weight.dtype)


def find_conv_bn_pairs(model: nn.Module, *args, **kwargs) -> List[Tuple[str, str]]:
    """Names ``(layer, bn)`` of every BatchNorm whose input is exactly the output of one conv / linear layer (or of a
    BatchNorm folded into one), in the order they are applied.

    Found by running ``model(*args, **kwargs)`` once (:class:`~snnzoo.export._trace.DataflowTrace`): a pair qualifies
    when the BatchNorm reads the layer's output, possibly reshaped or repeated over the leading batch / time
    dimensions only, each is called once, and nothing else reads the layer's output. A layer counts as called when its
    module runs or when its weight is passed to ``F.conv*d`` / ``F.linear`` (as :func:`~snnzoo.layers.apply_projection`
    does).
    """
    readers: Dict[nn.Module, List[nn.Module]] = {}
    calls: Dict[nn.Module, int] = {}

    def on_leaf(name, module, traced, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        for t in traced:
            if t is not None:
                readers.setdefault(t.payload, []).append(module)
        return module   # the payload of a layer's output is the layer (a BN's: the BN, for BN(BN(conv(x))))

    by_weight = {m.weight.data_ptr(): m for m in model.modules() if isinstance(m, _FOLDABLE)}

    def on_op(name, func, traced, args, kwargs, result):
        for t in traced:
            if t is not None:
                readers.setdefault(t.payload, []).append(name)
        if name in _FUNCTIONAL:   # a layer's weight used functionally (snnzoo.layers.apply_projection)
            weight = args[1] if len(args) > 1 else kwargs.get('weight')
            layer = by_weight.get(weight.data_ptr()) if torch.is_tensor(weight) else None
            if layer is not None and weight.shape[:2] == layer.weight.shape[:2]:
                calls[layer] = calls.get(layer, 0) + 1
                return layer, tuple(result.shape[1:])
        return None

    tracer = DataflowTrace(model, _FOLDABLE + _BATCHNORMS, on_leaf, on_op, watch=_FUNCTIONAL)
    bns = [m for m in model.modules() if isinstance(m, _BATCHNORMS)]
    with torch.no_grad(), tracer:
        for bn in bns:   # a BN whose statistics are read outside its forward (e.g. to pad) cannot be folded away
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                if t is not None:
                    tracer.mark(t, ('statistics', bn), tuple(t.shape))
        model(*args, **kwargs)
    pairs = []
    for layer in readers:
        if not isinstance(layer, _FOLDABLE) or calls.get(layer) != 1:
            continue
        reader = layer
        while len(readers.get(reader, ())) == 1 and isinstance(readers[reader][0], _BATCHNORMS) \
                and calls.get(readers[reader][0]) == 1 and ('statistics', readers[reader][0]) not in readers:
            reader = readers[reader][0]
            pairs.append((tracer.names[layer], tracer.names[reader]))
    return pairs


def fuse(model: nn.Module, *sample, inplace: bool = False, **kwargs) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the conv / linear layer before it.

    The pairs are found by running ``model(*sample, **kwargs)`` once (:func:`find_conv_bn_pairs`), so any network
    qualifies, whatever its forward does between the two layers (reshaping ``[T, B, ...]`` to ``[T*B, ...]``, repeating a
    static image over T, changing the memory layout). Without ``sample`` the model's default input
    (``model.pretrained_cfg['input_size']``, batch 2) is used. The folded layer gets a bias; the BatchNorm becomes
    ``nn.Identity``. Spikes equal the unfused model's except where a membrane lands within rounding of the threshold.
    """
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    if not sample:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        if 'input_size' not in cfg:
            raise ValueError(f"fuse({type(model).__name__}) needs a sample input to find the conv-BN pairs "
                             f"(the model has no pretrained_cfg['input_size']): call fuse(model, x)")
        sample = (torch.randn(2, *cfg['input_size']),)
    modules = dict(model.named_modules())
    for layer_name, bn_name in find_conv_bn_pairs(model, *sample, **kwargs):
        layer, bn = modules[layer_name], modules[bn_name]
        w, b = fold_bn(layer.weight, layer.bias, bn)
        layer.weight = nn.Parameter(torch.empty_like(layer.weight).copy_(w), requires_grad=False)   # same layout
        layer.bias = nn.Parameter(b, requires_grad=False)
        parent, _, child = bn_name.rpartition('.')
        setattr(modules[parent] if parent else model, child, nn.Identity())
    return model
