"""Spikes saved for backward are rebuilt from the neurons' H: the spike tensors are freed after forward, and every
gradient is bit-equal to autograd storing them."""
import gc
import weakref

import pytest
import torch
import torch.nn as nn

import snnzoo
from snnzoo.layers import BaseNode, LIFNode, ParametricLIFNode, channels_last_frames, recompute_saved_spikes
from snnzoo.layers.temporal import per_step


class _Chain(nn.Module):
    """LIF -> conv -> BN -> PLIF, then a product of two spike tensors and a linear layer on a view: the spike
    consumers the models have (convolutions, attention products, projections on flattened tokens)."""

    def __init__(self):
        super().__init__()
        self.lif1 = LIFNode(tau=2.0, detach_reset=True, backend='torch')
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.lif2 = ParametricLIFNode(v_threshold=0.5, v_reset=None, surrogate='atan', backend='torch')
        self.lif3 = LIFNode(tau=1.5, decay_input=False, v_threshold=0.3, backend='torch')
        self.fc = nn.Linear(8 * 6 * 6, 5)
        self.kept = []  # weak references to the spike tensors, for the test

    def forward(self, x):
        s1 = self.lif1(x)
        s2 = self.lif2(per_step(s1, self.conv1, self.bn1))
        s3 = self.lif3(per_step(s2, self.conv2, self.bn2))
        self.kept = [weakref.ref(s) for s in (s1, s2, s3)]
        return self.fc((s2 * s3).flatten(2)).mean(0)


def _grads(model, x, enabled):
    model.zero_grad()
    x = x.clone().requires_grad_()
    with recompute_saved_spikes(enabled):
        out = model(x)
    gc.collect()
    alive = [ref() is not None for ref in model.kept]
    out.square().sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()], alive


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('channels_last', [False, True])
def test_gradients_bit_equal_and_spikes_freed(dtype, channels_last):
    torch.manual_seed(0)
    model = _Chain().to(dtype)
    x = 2 * torch.rand(4, 2, 3, 6, 6, dtype=dtype)
    if channels_last:
        x = channels_last_frames(x)
    stored, alive_stored = _grads(model, x, enabled=False)
    rebuilt, alive_rebuilt = _grads(model, x, enabled=True)
    assert alive_stored == [True, True, True]      # autograd keeps every spike tensor for backward ...
    assert alive_rebuilt == [False, False, False]  # ... the context keeps none of them
    for a, b in zip(stored, rebuilt):
        assert torch.equal(a, b)


def _linear_weight_grads(x, after_neuron=lambda s: s):
    """The weight gradients of LIF -> ``after_neuron`` -> Linear on ``x [T, B, 16]``, spikes stored and rebuilt."""
    torch.manual_seed(0)
    lif, fc = LIFNode(backend='torch'), nn.Linear(16, 4).to(x.dtype)
    grads = []
    for enabled in (False, True):
        with recompute_saved_spikes(enabled):
            out = fc(after_neuron(lif(x.clone().requires_grad_())))
        out.float().square().sum().backward()
        grads.append(fc.weight.grad)
        fc.weight.grad = None
    assert grads[0].abs().sum() > 0
    return grads


def test_low_precision_spikes():
    """bfloat16 input: H is float32, the spikes bfloat16; the rebuilt spikes have the spikes' dtype."""
    assert torch.equal(*_linear_weight_grads((3 * torch.rand(4, 2, 16)).to(torch.bfloat16)))


def test_spikes_modified_in_place_are_stored():
    """A spike tensor changed in place after the neuron no longer equals (H >= V_th): it is stored as usual."""
    assert torch.equal(*_linear_weight_grads(3 * torch.rand(4, 2, 16), after_neuron=lambda s: s.mul_(0.5)))


def test_nothing_registered_without_gradients():
    lif = LIFNode(backend='torch')
    with torch.no_grad(), recompute_saved_spikes():
        s = lif(torch.rand(2, 3, 4) * 3)
    ref = weakref.ref(s)
    del s
    assert ref() is None


@pytest.mark.parametrize('name, kwargs, shape', [
    ('spikformer_2_256_dvs', dict(num_classes=5, img_size=32, T=2), (2, 2, 2, 32, 32)),
    ('sdt_8_384', dict(num_classes=5, img_size=32, T=2, embed_dim=64, depth=1, num_heads=2), (2, 3, 32, 32)),
    ('qkformer_4_384_cifar', dict(num_classes=5, T=2, embed_dim=32, num_heads=2), (2, 3, 32, 32)),
    ('ms_resnet18', dict(num_classes=5, T=2, layers=[1, 1, 1, 1]), (2, 3, 32, 32)),
    ('sew_resnet18', dict(num_classes=5, T=2, layers=[1, 1, 1, 1], connect_f='IAND'), (2, 3, 32, 32)),
])
def test_models_switch(name, kwargs, shape):
    """``set_recompute_spikes``: None (default) stores the spikes of a CPU forward that a layer saves, True frees
    every neuron's spikes after forward; the gradients are bit-equal."""
    torch.manual_seed(0)
    model = snnzoo.create_model(name, backend='torch', **kwargs).train()
    kept = []
    for node in model.modules():
        if isinstance(node, BaseNode):
            node.register_forward_hook(lambda m, i, out: kept.append(weakref.ref(out)))
    x = torch.randn(shape)
    grads, alive = [], []
    for enable in (None, True):
        model.set_recompute_spikes(enable)
        model.zero_grad()
        kept.clear()
        out = model(x)
        gc.collect()
        alive.append(sum(ref() is not None for ref in kept))
        out.square().sum().backward()
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert alive[0] >= len(kept) // 2 and alive[1] == 0   # (spikes only summed or averaged are never saved)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.equal(a, b)
