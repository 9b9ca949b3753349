"""Threshold balancing: the activation scale of every ReLU / QCFS site of an ANN, measured on calibration data."""
from typing import Dict, Iterable, List, Union

import torch
import torch.fx as fx

__all__ = ['calibration_batches', 'activation_scales']

Batches = Union[torch.Tensor, Iterable]


def calibration_batches(data: Batches) -> List[torch.Tensor]:
    """``data`` (a tensor ``[N, ...]``, or an iterable of tensors or of ``(x, y)`` pairs as a DataLoader yields) as a
    list of input tensors; raises a clear error when it is empty, not floating point or not finite."""
    if data is None:
        raise ValueError("threshold balancing needs calibration data (a tensor [N, ...] or a DataLoader of training "
                         "images); got None")
    batches = [data] if isinstance(data, torch.Tensor) else list(data)
    out = []
    for i, b in enumerate(batches):
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration batch {i} is a {type(x).__name__}, expected a tensor (or an (x, y) pair)")
        if not x.is_floating_point():
            raise TypeError(f"calibration batch {i} has dtype {x.dtype}; pass normalised floating-point inputs")
        if x.numel() == 0:
            continue
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"calibration batch {i} contains NaN or infinite values; fix or drop those inputs")
        out.append(x)
    if not out:
        raise ValueError("the calibration data is empty: pass at least one batch of (training) inputs")
    return out


class _Recorder(fx.Interpreter):
    """Runs a traced ANN and keeps the outputs of the nodes in ``sites``, as ``[channels, values]``."""

    def __init__(self, gm: fx.GraphModule, sites: List[fx.Node], channelwise: bool, max_values: int):
        super().__init__(gm)
        self.sites, self.channelwise, self.max_values = set(sites), channelwise, max_values
        self.values: Dict[str, List[torch.Tensor]] = {n.name: [] for n in sites}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n in self.sites:
            a = out.detach().transpose(0, 1).flatten(1) if self.channelwise else out.detach().reshape(1, -1)
            limit = max(1, self.max_values // a.shape[0])
            if a.shape[1] > limit:  # an even subsample keeps the memory bounded
                a = a[:, torch.linspace(0, a.shape[1] - 1, limit, device=a.device).long()]
            self.values[n.name].append(a)
        return out


@torch.no_grad()
def activation_scales(gm: fx.GraphModule, sites: List[fx.Node], batches: List[torch.Tensor], percentile: float = 100.0,
                      channelwise: bool = False, max_values: int = 1 << 20) -> Dict[str, torch.Tensor]:
    """The ``percentile`` (100: the maximum) of every site's output over the calibration batches: one value
    (layer-wise) or one per channel (dim 1; channel-wise). Up to ``max_values`` values per site and batch are kept.
    A channel that stays at 0 on all the calibration data gets its layer's scale (1 if the whole layer does)."""
    rec = _Recorder(gm, sites, channelwise, max_values)
    for x in batches:
        rec.run(x)
    scales = {}
    for name, chunks in rec.values.items():
        a = torch.cat(chunks, dim=1)
        if percentile >= 100:
            s = a.amax(dim=1)
        else:
            k = max(1, min(a.shape[1], int(round(percentile / 100.0 * a.shape[1]))))
            s = a.kthvalue(k, dim=1).values
        if channelwise:
            layer = a.amax() if percentile >= 100 else s.amax()
            s = torch.where(s > 0, s, layer if layer > 0 else torch.ones_like(layer))
        else:
            s = s.reshape(()) if s.item() > 0 else torch.ones_like(s.reshape(()))
        scales[name] = s
    return scales
