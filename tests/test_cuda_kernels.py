"""The fused neuron kernels of snnzoo.cuda, checked without a GPU and (tests marked ``cuda``) with one.

Without a GPU: (1) NVRTC compiles every kernel variant for sm_80 and sm_90; (2) the kernels themselves (the
``__global__`` functions of neuron_kernels.cu, compiled for the host through tests/cuda_host's shim of the CUDA
built-ins, see tests/cuda_emulator.py) run the custom ops on CPU tensors with the grid, block and arguments of ops.py
and equal snnzoo's torch backend for every neuron option and dtype (tests/test_cuda_host_emulation.py adds layouts,
huge indices, NaN / inf and faults); (3) the pure-Python parts (variants, caches, dispatch, fake implementations,
torch.compile tracing). With a GPU: the kernels equal the torch backend for every variant and dtype, under
torch.compile, on a side stream and on a second device.
"""
import ast
import copy
import gc
import itertools
import re
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import snnzoo.cuda as snn_cuda
from cuda_emulator import emulator_lib, host_ops  # noqa: F401 (fixtures)
from snnzoo.cuda import kernels, ops
from snnzoo.layers import IFNode, LIFNode, MultiStep, ParametricLIFNode, recompute_saved_spikes, set_backend
from snnzoo.layers.neuron import NeuronConfig, neuron_multistep
from snnzoo.layers.surrogate import SURROGATES, default_alpha

CUDA_DIR = Path(snn_cuda.__file__).resolve().parent
LOW = (torch.float16, torch.bfloat16)


def all_configs():
    """Every neuron option: charge x reset x decay_input x detach_reset x surrogate, with varied scalars."""
    out = []
    combos = itertools.product(('if', 'lif', 'plif'), (True, False), (True, False), (True, False), SURROGATES)
    for i, (charge, hard, decay_input, detach, surrogate) in enumerate(combos):
        out.append(NeuronConfig(
            charge=charge, tau=(2.0, 4 / 3, 3.0)[i % 3], decay_input=decay_input,
            v_threshold=(1.0, 0.5, 0.7)[i % 3], v_reset=(0.0, -0.2)[i % 2] if hard else None,
            detach_reset=detach, surrogate=surrogate, alpha=default_alpha(surrogate) * (1.0, 1.5)[i % 2]))
    return out


CONFIGS = all_configs()


def cfg_id(cfg):
    return (f"{cfg.charge}-{'hard' if cfg.v_reset is not None else 'soft'}-{'di' if cfg.decay_input else 'nodi'}-"
            f"{'detach' if cfg.detach_reset else 'keep'}-{cfg.surrogate}")


# every kernel variant (charge x reset x surrogate) once on the 16-byte vector path, decay_input / detach_reset rotating
VECTOR_CONFIGS = [cfg for i, cfg in enumerate(CONFIGS) if (i // 4) % 4 == i % 4]
HOST_GRID = [pytest.param(cfg, False, id=cfg_id(cfg) + '-scalar') for cfg in CONFIGS] + \
    [pytest.param(cfg, True, id=cfg_id(cfg) + '-vector') for cfg in VECTOR_CONFIGS]


def inputs(cfg, shape=(6, 3, 41), dtype=torch.float32, device='cpu', seed=0):
    """x [T, ...] (firing about half the time), v0, PLIF's w, and upstream gradients for spikes and V[T]."""
    g = torch.Generator().manual_seed(seed)
    gain = {'if': 1.0, 'lif': cfg.tau, 'plif': 1.7}[cfg.charge] if cfg.decay_input else 1.0
    x = (torch.randn(shape, generator=g) * 1.5 + 0.6) * cfg.v_threshold * gain
    v0 = torch.randn(shape[1:], generator=g) * 0.5
    w = torch.tensor(0.4)
    grad_s = torch.randn(shape, generator=g)
    grad_v = torch.randn(shape[1:], generator=g)
    to = dict(device=device)
    return x.to(dtype=dtype, **to), v0.to(**to), w.to(**to), grad_s.to(dtype=dtype, **to), grad_v.to(**to)


def run(fn, cfg, x, v0, w, grad_s, grad_v):
    """Forward + backward of fn(x, v0, k, cfg) -> (spikes, V[T]); returns outputs and gradients (x, v0, w)."""
    x = x.detach().clone().requires_grad_()
    v0 = None if v0 is None else v0.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    k = w.sigmoid() if cfg.charge == 'plif' else None
    spikes, v = fn(x, v0, k, cfg)
    ((spikes.float() * grad_s.float()).sum() + (v * grad_v).sum()).backward()
    return dict(spikes=spikes.detach(), v=v.detach(), x=x.grad, v0=None if v0 is None else v0.grad,
                w=w.grad if cfg.charge == 'plif' else None)


def torch_backend(x, v0, k, cfg):
    return neuron_multistep(x, v0, k, cfg, backend='torch')


def assert_grads_close(ours, ref, names=('x', 'v0', 'w'), rtol=1e-5, atol=1e-6):
    for name in names:
        if ref[name] is None:
            assert ours[name] is None, name
            continue
        assert ours[name].dtype == ref[name].dtype, name
        scale = ref[name].abs().max().item()
        torch.testing.assert_close(ours[name], ref[name], rtol=rtol, atol=atol * max(scale, 1.0), msg=name)


# ---------------------------------------------------------------------------------------------------------------
# (1) NVRTC compiles every variant for sm_80 and sm_90 (no GPU needed)

@pytest.fixture(scope='module')
def nvrtc():
    try:
        return kernels._nvrtc()
    except RuntimeError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize('arch', [80, 90])
def test_nvrtc_compiles_every_variant(nvrtc, arch):
    variants = kernels.all_variants()
    compiled = kernels.compile_variants(variants, arch)
    assert compiled.image[:4] == b'\x7fELF'                       # a CUBIN for sm_<arch>
    assert set(compiled.lowered) == {v.name_expression for v in variants}
    assert len(set(compiled.lowered.values())) == len(variants) == 90


def test_unknown_newer_architecture_gets_ptx(nvrtc):
    compiled = kernels.compile_variants([kernels.Variant('fwd', 'float16', 'plif', True)], 999)
    assert compiled.image.startswith(b'//') and b'.entry' in compiled.image   # PTX the driver JIT-compiles


def test_compile_error_carries_the_log(nvrtc, monkeypatch, tmp_path):
    broken = tmp_path / 'neuron_kernels.cu'
    broken.write_text(kernels.KERNEL_SOURCE.read_text().replace('forward_lanes<CHARGE, HARD, 1>', 'no_such<1>'))
    monkeypatch.setattr(kernels, 'KERNEL_SOURCE', broken)
    with pytest.raises(kernels.CompileError, match='no_such'):
        kernels.compile_variants([kernels.Variant('fwd', 'float32', 'lif', True)], 80)


def test_binary_cache_memory_and_disk(nvrtc, monkeypatch, tmp_path):
    monkeypatch.setenv('SNNZOO_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(kernels, '_binaries', {})
    variant = kernels.variant_for('bwd', 'bfloat16', 'plif', False, 1)
    image, lowered = kernels.binary(variant, 90)
    assert image[:4] == b'\x7fELF' and lowered.startswith('_Z')
    assert len(list(tmp_path.glob('*.bin'))) == 1
    monkeypatch.setattr(kernels, 'compile_variants', lambda *a: pytest.fail('compiled again instead of caching'))
    assert kernels.binary(variant, 90) == (image, lowered)            # memory
    monkeypatch.setattr(kernels, '_binaries', {})
    assert kernels.binary(variant, 90) == (image, lowered)            # disk


def test_truncated_or_corrupt_cache_file_is_recompiled(nvrtc, monkeypatch, tmp_path):
    monkeypatch.setenv('SNNZOO_KERNEL_CACHE', str(tmp_path))
    monkeypatch.setattr(kernels, '_binaries', {})
    variant = kernels.variant_for('fwd', 'float32', 'if', False, 0)
    entry = kernels.binary(variant, 80)
    [path] = tmp_path.glob('*.bin')
    complete = path.read_bytes()
    compiled = []
    compile_variants = kernels.compile_variants
    monkeypatch.setattr(kernels, 'compile_variants', lambda *a: compiled.append(a) or compile_variants(*a))
    for damaged in (complete[:-100], complete[:-1] + bytes([complete[-1] ^ 1]), b'', complete[:20]):
        path.write_bytes(damaged)
        monkeypatch.setattr(kernels, '_binaries', {})
        assert kernels.binary(variant, 80) == entry
        assert path.read_bytes() == complete                           # rewritten whole
    assert len(compiled) == 4
    assert not list(tmp_path.glob('*.tmp'))


# ---------------------------------------------------------------------------------------------------------------
# (2) the kernels compiled for the host, run through the custom ops on CPU tensors, against the torch backend

@pytest.mark.parametrize('cfg, vector', HOST_GRID)
def test_emulated_kernels_equal_torch_backend_float32(host_ops, monkeypatch, cfg, vector):
    """Every option, from rest and from v0, scalar and 16-byte vector paths (a partial last block either way)."""
    if vector:
        monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    x, v0, w, grad_s, grad_v = inputs(cfg, shape=(6, 3, 44 if vector else 41))
    for start in (None, v0):
        ref = run(torch_backend, cfg, x, start, w, grad_s, grad_v)
        ours = run(ops.multistep, cfg, x, start, w, grad_s, grad_v)
        assert 0.05 < ref['spikes'].mean() < 0.95
        assert torch.equal(ours['spikes'], ref['spikes'])
        assert torch.equal(ours['v'], ref['v'])
        assert_grads_close(ours, ref)
    assert {launch.vec for _, launch, _ in host_ops.launches} == {vector}
    # the saved H equals the torch backend's bit for bit
    k = w.sigmoid() if cfg.charge == 'plif' else None
    h = _forward_op(x, v0, k, cfg, save_h=True)[2]
    ref_h = neuron_multistep(x.clone().requires_grad_(), v0, k, cfg, backend='torch')[0].grad_fn.saved_tensors[0]
    assert torch.equal(h, ref_h)


def _forward_op(x, v0, k, cfg, save_h):
    return torch.ops.snnzoo.neuron_fwd(x, v0, k, cfg.charge, cfg.decay_input, cfg.tau, cfg.v_threshold, cfg.v_reset,
                                       cfg.detach_reset, cfg.surrogate_id, cfg.alpha, save_h)


def _backward_op(grad_s, grad_v, h, v0, k, cfg, dtype=None):
    dtype = h.dtype if dtype is None else dtype
    return torch.ops.snnzoo.neuron_bwd(grad_s, grad_v, h, v0, k, dtype, cfg.charge, cfg.decay_input, cfg.tau,
                                       cfg.v_threshold, cfg.v_reset, cfg.detach_reset, cfg.surrogate_id, cfg.alpha,
                                       v0 is not None)


def check_low_precision(cfg, dtype, device='cpu'):
    """16-bit storage: spikes and V[T] equal the torch backend (float32 arithmetic on the same rounded inputs); the
    saved H is the rounded float32 H (nudged only where rounding would flip a spike; PLIF: the float32 H itself);
    backward equals the float32 kernel path run on the saved H, rounded once at the end; and (smooth surrogates)
    stays within the dtype's precision of the all-float32 gradients. PLIF's dL/dw equals the torch backend's to
    float32 rounding (a 16-bit H made it up to 36% off in bfloat16)."""
    cpu = inputs(cfg, shape=(6, 3, 40), dtype=dtype)
    ref = run(torch_backend, cfg, *cpu)                                # the reference always runs on the CPU
    x, v0, w, grad_s, grad_v = (t.to(device) for t in cpu)
    k = w.sigmoid().detach() if cfg.charge == 'plif' else None
    ours = {key: None if val is None else val.cpu()
            for key, val in run(ops.multistep, cfg, x, v0, w, grad_s, grad_v).items()}
    assert ours['spikes'].dtype == dtype and ours['v'].dtype == torch.float32
    assert torch.equal(ours['spikes'], ref['spikes']) and torch.equal(ours['v'], ref['v'])

    spikes, _, h = _forward_op(x, v0, k, cfg, save_h=True)
    h32 = _forward_op(x.float(), v0, k, cfg, save_h=True)[2]
    assert torch.equal((h.float() >= cfg.v_threshold).to(dtype), spikes)
    if cfg.charge == 'plif':
        assert h.dtype == torch.float32 and torch.equal(h, h32)
    else:
        nearest = h32.to(dtype)
        moved = h != nearest
        assert torch.equal(moved, (nearest.float() >= cfg.v_threshold) != (h32 >= cfg.v_threshold))

    grad_x, grad_v0, grad_k = _backward_op(grad_s, grad_v, h, v0, k, cfg, dtype)
    exp_x, exp_v0, exp_k = _backward_op(grad_s.float(), grad_v, h.float(), v0, k, cfg, torch.float32)
    assert torch.equal(grad_x, exp_x.to(dtype)) and torch.equal(grad_v0, exp_v0)
    if cfg.charge == 'plif':
        torch.testing.assert_close(grad_k, exp_k, rtol=1e-6, atol=1e-6 * max(exp_k.abs().item(), 1.0))
        assert_grads_close(ours, ref, names=('w',))

    if cfg.surrogate != 'rectangle':    # (a step: H rounded across its edge flips a surrogate value)
        bound = 0.01 if dtype == torch.float16 else 0.05
        for name in ('x', 'v0'):
            err = (ours[name].float() - ref[name].float()).norm() / ref[name].float().norm()
            assert err < bound, (name, err.item())


@pytest.mark.parametrize('dtype', LOW, ids=str)
@pytest.mark.parametrize('cfg, vector', HOST_GRID)
def test_emulated_kernels_low_precision(host_ops, monkeypatch, cfg, dtype, vector):
    if vector:
        monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    check_low_precision(cfg, dtype)
    assert {launch.vec for _, launch, _ in host_ops.launches} == {vector}


@pytest.mark.parametrize('node', [
    lambda b: LIFNode(tau=2.0, detach_reset=True, backend=b),
    lambda b: LIFNode(tau=4 / 3, decay_input=False, v_threshold=0.5, detach_reset=True, surrogate='rectangle',
                      backend=b),
    lambda b: IFNode(v_reset=None, surrogate='atan', backend=b),
    lambda b: ParametricLIFNode(init_tau=2.0, surrogate='piecewise_quadratic', backend=b),
], ids=['lif', 'ms_resnet_lif', 'if_soft', 'plif'])
def test_nodes_with_cupy_backend_run_the_ops(host_ops, monkeypatch, node):
    """LIFNode / IFNode / ParametricLIFNode(backend='cupy') -> snnzoo.cuda -> custom ops, stateless and stateful."""
    monkeypatch.setattr(snn_cuda, 'require', lambda x: None)         # CPU tensors reach the host build
    calls = []
    monkeypatch.setattr(ops, '_HOST_RUN', lambda v, l, a, run=ops._HOST_RUN: (calls.append(v), run(v, l, a)))
    torch.manual_seed(0)
    for stateful in (False, True):
        ours, ref = node('cupy'), node('torch')
        ours.stateful = ref.stateful = stateful
        xs = [torch.randn(4, 2, 5, 6) + 0.5 for _ in range(2)]
        for x in xs:                                                    # stateful: the second call continues
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            sa, sb = ours(a), ref(b)
            assert torch.equal(sa, sb)
            (sa * x).sum().backward()
            (sb * x).sum().backward()
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
            if stateful:
                assert torch.equal(ours.v, ref.v)
                ours.v, ref.v = ours.v.detach(), ref.v.detach()
        if isinstance(ours, ParametricLIFNode):
            torch.testing.assert_close(ours.w.grad, ref.w.grad, rtol=1e-5, atol=1e-6)
    assert {v.direction for v in calls} == {'fwd', 'bwd'}


def check_spikes_rebuilt(dtype, device):
    """Under recompute_saved_spikes the ops' spikes are freed after forward and rebuilt from their H (float16 and
    bfloat16 H keep the spike decision): the consumer's gradients are bit-equal to storing them."""
    torch.manual_seed(0)
    lif, fc = LIFNode(v_threshold=0.3, backend='cupy'), nn.Linear(6, 3).to(device, dtype)
    x = (torch.randn(4, 2, 6) + 0.5).to(device, dtype)
    grads, alive = [], []
    for enabled in (False, True):
        fc.zero_grad()
        with recompute_saved_spikes(enabled):
            s = lif(x.clone().requires_grad_())
            out = fc(s)
        ref = weakref.ref(s)
        del s
        gc.collect()
        alive.append(ref() is not None)
        out.float().square().sum().backward()
        grads.append(fc.weight.grad.clone())
    assert alive == [True, False]
    assert grads[0].abs().sum() > 0 and torch.equal(*grads)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_spikes_rebuilt_from_the_ops_h(host_ops, monkeypatch, dtype):
    monkeypatch.setattr(snn_cuda, 'require', lambda x: None)
    check_spikes_rebuilt(dtype, 'cpu')


def test_inference_saves_nothing(host_ops):
    cfg = NeuronConfig()
    x = torch.randn(3, 8)
    with torch.no_grad():
        _, _, h = _forward_op(x, None, None, cfg, save_h=False)
    assert h.numel() == 0
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
        ops.multistep(x.requires_grad_(), None, None, cfg)
    assert [tuple(t.shape) for t in seen if t is not None] == [(3, 8)]   # H only: 4 bytes per element in float32


def _layouts(shape=(3, 2, 4, 5, 6), dtype=torch.float32):
    """A [T, B, C, H, W] tensor contiguous, with channels-last steps, permuted, and as an offset (non-dense) view."""
    x = torch.randn(shape).to(dtype)
    empty = lambda *size: torch.empty(size, dtype=dtype)  # noqa: E731
    channels_last = empty(shape[0], shape[1], shape[3], shape[4], shape[2]).permute(0, 1, 4, 2, 3).copy_(x)
    permuted = empty(shape[3], shape[0], shape[2], shape[1], shape[4]).permute(1, 3, 2, 0, 4).copy_(x)
    offset = empty(shape[0], shape[1], shape[2] + 1, shape[3], shape[4])[:, :, 1:].copy_(x)
    return {'contiguous': x, 'channels_last': channels_last, 'permuted': permuted, 'offset': offset}


@pytest.mark.parametrize('layout, charge, dtype', [
    ('contiguous', 'lif', torch.bfloat16), ('channels_last', 'plif', torch.bfloat16),
    ('permuted', 'lif', torch.float32), ('offset', 'plif', torch.float32)])
def test_opcheck(host_ops, layout, charge, dtype):
    """torch.library.opcheck: schema, fake tensors (strides included: the real ops keep each step's layout as the
    torch backend does, and the fake implementations say so), autograd registration and AOT dispatch of both ops."""
    x = _layouts(dtype=dtype)[layout].add_(0.6)
    v0 = torch.randn(x.shape[1:]) * 0.5
    v0 = v0.to(memory_format=torch.channels_last) if layout == 'channels_last' else v0
    grad_s, grad_v = torch.randn_like(x), torch.randn_like(v0)
    k = torch.tensor(0.6) if charge == 'plif' else None
    cfg = NeuronConfig(charge=charge, v_reset=None, surrogate='atan', alpha=2.0)
    options = (charge, True, 2.0, 1.0, None, False, 1, 2.0)
    fwd_args = (x.detach().requires_grad_(), v0.detach().requires_grad_(),
                None if k is None else k.detach().requires_grad_(), *options, True)
    torch.library.opcheck(torch.ops.snnzoo.neuron_fwd.default, fwd_args)
    spikes, _, h = _forward_op(x, v0, k, cfg, True)
    ref = neuron_multistep(x, v0, k, cfg, backend='torch')[0]
    assert spikes.stride() == h.stride() == ref.stride() and torch.equal(spikes, ref)
    torch.library.opcheck(torch.ops.snnzoo.neuron_bwd.default, (grad_s, grad_v, h, v0, k, dtype, *options, True))
    torch.library.opcheck(torch.ops.snnzoo.neuron_bwd.default, (None, None, h, None, k, dtype, *options, False))


class ConvBNLIF(nn.Module):
    """A small Spikformer-like stack: conv-BN-LIF, conv-BN-PLIF, pooled linear head."""

    def __init__(self, backend):
        super().__init__()
        self.block1 = MultiStep(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.lif1 = LIFNode(tau=2.0, detach_reset=True, backend=backend)
        self.block2 = MultiStep(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.lif2 = ParametricLIFNode(backend=backend)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.lif1(self.block1(x))
        x = self.lif2(self.block2(x))
        return self.head(x.mean((0, 3, 4)))


def test_torch_compile_fullgraph_cpu(host_ops, monkeypatch):
    """torch.compile(fullgraph=True) traces a conv-BN-LIF stack through the custom ops (fake impls + autograd)."""
    monkeypatch.setattr(snn_cuda, 'require', lambda x: None)
    torch.manual_seed(0)
    model = ConvBNLIF('cupy')
    x = torch.randn(2, 3, 3, 8, 8) + 0.5
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


# ---------------------------------------------------------------------------------------------------------------
# (3) pure-Python parts: variants, dispatch, fake implementations, imports

def test_variants():
    variants = kernels.all_variants()
    assert len(variants) == len(set(variants)) == 18 + 72
    assert len({v.name_expression for v in variants}) == 90
    assert kernels.variant_for('fwd', 'float16', 'lif', True, 3) == kernels.Variant('fwd', 'float16', 'lif', True)
    assert kernels.variant_for('bwd', 'bfloat16', 'if', False, 2).name_expression == \
        'snn::neuron_bwd<snn::bfloat16, 0, false, 2>'
    with pytest.raises(TypeError, match="backend='torch'"):
        kernels.variant_for('fwd', 'float64', 'lif', True, 0)
    with pytest.raises(ValueError, match='surrogate'):
        kernels.variant_for('bwd', 'float32', 'lif', True, 7)
    with pytest.raises(ValueError, match='charge'):
        kernels.variant_for('fwd', 'float32', 'alif', True, 0)


def test_python_constants_match_the_header():
    enums = {name: int(value) for name, value in
             re.findall(r'\b((?:F|CHARGE|SG)_\w+) = (\d+)', (CUDA_DIR / 'neuron_core.cuh').read_text())}
    assert {name: enums['CHARGE_' + name.upper()] for name in kernels.CHARGES} == kernels.CHARGES
    assert {name: enums['SG_' + name.upper()] for name in kernels.SURROGATE_IDS} == kernels.SURROGATE_IDS
    flags = {name: value for name, value in enums.items() if name.startswith('F_')}
    assert flags == {name: getattr(ops, name) for name in flags}


def test_surrogate_ids_and_constants_match_the_layers():
    assert kernels.SURROGATE_IDS == {name: sid for name, (sid, _) in SURROGATES.items()}
    assert kernels.surrogate_constants(2, 1.0) == (0.5, 1.0)
    assert kernels.surrogate_constants(3, 2.0) == (-4.0, 2.0)


def test_launch_config():
    x = torch.empty(4, 1 << 20)
    L = ops.Launch
    assert ops.launch_config(1 << 20, torch.float32, (x, None)) == L(True, 1 << 10, 256)
    assert ops.launch_config(1 << 20, torch.bfloat16, (x.bfloat16(),)) == L(True, 1 << 9, 256)
    assert ops.launch_config((1 << 20) + 2, torch.float32, (x,)) == L(False, 4097, 256)      # not a multiple of 4
    assert ops.launch_config(1 << 20, torch.float32, (x.view(-1)[1:],)) == L(False, 1 << 12, 256)  # misaligned
    assert ops.launch_config(1000, torch.float32, (x,)) == L(False, 4, 256)                  # small: scalar path
    assert ops.launch_config(1000, torch.float32, (x,), block=64) == L(False, 16, 64)
    for block in (48, 0, 2048):   # the block reduction's shuffles need full warps
        with pytest.raises(ValueError, match='multiple of 32'):
            ops.launch_config(1000, torch.float32, (x,), block=block)


def test_cupy_backend_without_gpu_names_the_fix(monkeypatch):
    x = torch.randn(3, 4)
    for node in (LIFNode(backend='cupy'), set_backend(nn.Sequential(IFNode()), 'cupy')):
        with pytest.raises(RuntimeError, match=r"pip install 'snnzoo\[cuda\]'.*backend='torch'"):
            node(x)
    monkeypatch.setattr(snn_cuda, '_cupy_installed', lambda: False)
    with pytest.raises(RuntimeError, match=r"CuPy, which is not installed: pip install 'snnzoo\[cuda\]'"):
        LIFNode(backend='cupy')(x)
    assert not snn_cuda.is_available()
    assert torch.equal(LIFNode(backend='auto')(x), LIFNode(backend='torch')(x))   # auto falls back silently


def test_is_available_and_require_check_the_tensor(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert snn_cuda.is_available()
    assert not snn_cuda.is_available(torch.zeros(2))                   # a CPU tensor
    cuda64 = SimpleNamespace(is_cuda=True, dtype=torch.float64, device=torch.device('cuda', 0))
    assert not snn_cuda.is_available(cuda64)                           # float64: the torch backend's job
    assert snn_cuda.is_available(SimpleNamespace(is_cuda=True, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="float64; use backend='torch'"):
        snn_cuda.require(cuda64)


def test_ops_refuse_cpu_tensors_without_the_host_build():
    with pytest.raises(RuntimeError, match='CUDA tensors'):
        _forward_op(torch.randn(2, 3), None, None, NeuronConfig(), False)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fake_implementations(dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode
    cfg = NeuronConfig(charge='plif')
    with FakeTensorMode():
        x = torch.empty(4, 2, 3, 5, dtype=dtype)
        v0, k = torch.empty(2, 3, 5), torch.empty(())
        spikes, v, h = _forward_op(x, v0, k, cfg, save_h=True)
        assert (spikes.shape, spikes.dtype, v.shape, v.dtype, h.shape, h.dtype) == \
            (x.shape, dtype, v0.shape, torch.float32, x.shape, torch.float32)   # PLIF saves H in float32
        assert _forward_op(x, None, k, cfg, save_h=False)[2].shape == (0,)
        gx, gv0, gk = _backward_op(torch.empty_like(x), None, h, v0, k, cfg, dtype)
        assert (gx.shape, gx.dtype, gv0.shape, gv0.dtype, gk.shape, gk.dtype) == \
            (x.shape, dtype, v0.shape, torch.float32, (), torch.float32)
    x = torch.empty(6, 7, device='meta', dtype=dtype)
    spikes, v, h = _forward_op(x, None, None, NeuronConfig(), save_h=False)
    assert spikes.device.type == 'meta' and v.shape == (7,) and h.shape == (0,)
    with pytest.raises(ValueError, match='v0 must be a float32 tensor of shape'):
        _forward_op(x, torch.empty(6, device='meta'), None, NeuronConfig(), False)
    with pytest.raises(ValueError, match="'plif' needs decay tensor k"):
        _forward_op(x, None, None, NeuronConfig(charge='plif'), False)


def _imported_names(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ''] if node.level == 0 else []


def test_cuda_package_imports_nothing_of_snnzoo_and_no_cupy_at_import():
    for path in CUDA_DIR.glob('*.py'):
        tree = ast.parse(path.read_text())
        in_functions = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            assert getattr(node, 'level', 0) <= 1, f"{path.name} imports from outside snnzoo.cuda"
            tops = {name.split('.')[0] for name in _imported_names(node)}
            assert 'snnzoo' not in tops, f"{path.name} imports snnzoo"
            assert 'cupy' not in tops or id(node) in in_functions, f"{path.name} imports cupy at import time"
    # loaded on its own (not through snnzoo/__init__), the package and its ops pull in neither snnzoo nor cupy
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('alone', "
            f"{str(CUDA_DIR / '__init__.py')!r}, submodule_search_locations=[{str(CUDA_DIR)!r}]); "
            f"sys.modules['alone'] = module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            f"import alone.ops; "
            f"sys.exit(' '.join(m for m in sys.modules if m.split('.')[0] in ('snnzoo', 'cupy')) or None)")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, f"snnzoo.cuda imported: {proc.stderr[-800:]}"


# ---------------------------------------------------------------------------------------------------------------
# (4) on a GPU: the kernels themselves

def cuda_run(cfg, x, v0, w, grad_s, grad_v):
    dev = torch.device('cuda')
    ours = run(lambda *a: snn_cuda.neuron_multistep(*a), cfg, x.to(dev), None if v0 is None else v0.to(dev),
               w.to(dev), grad_s.to(dev), grad_v.to(dev))
    return {k: None if v is None else v.cpu() for k, v in ours.items()}


@pytest.mark.cuda
@pytest.mark.parametrize('vector', [False, True], ids=['scalar', 'vector'])
@pytest.mark.parametrize('cfg', CONFIGS, ids=cfg_id)
def test_cuda_float32_equals_torch_backend(cfg, vector, monkeypatch):
    """Kernels on the GPU vs the torch backend on the CPU (true division, like the kernels): spikes and V[T]
    identical, gradients to float32 rounding; with and without 16-byte vector accesses."""
    if vector:
        monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    x, v0, w, grad_s, grad_v = inputs(cfg, shape=(5, 4, 64))
    for start in (None, v0):
        ref = run(torch_backend, cfg, x, start, w, grad_s, grad_v)
        ours = cuda_run(cfg, x, start, w, grad_s, grad_v)
        assert torch.equal(ours['spikes'], ref['spikes']) and torch.equal(ours['v'], ref['v'])
        assert_grads_close(ours, ref)


@pytest.mark.cuda
@pytest.mark.parametrize('vector', [False, True], ids=['scalar', 'vector'])
@pytest.mark.parametrize('dtype', LOW, ids=str)
@pytest.mark.parametrize('cfg', CONFIGS, ids=cfg_id)
def test_cuda_low_precision(cfg, dtype, vector, monkeypatch):
    if vector:
        monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    check_low_precision(cfg, dtype, device='cuda')


@pytest.mark.cuda
def test_cuda_large_tensor_vector_path():
    cfg = NeuronConfig(tau=2.0, detach_reset=True)
    x, _, w, grad_s, grad_v = inputs(cfg, shape=(4, 8, 64, 1024))
    ref = run(torch_backend, cfg, x, None, w, grad_s, grad_v)
    ours = cuda_run(cfg, x, None, w, grad_s, grad_v)
    assert torch.equal(ours['spikes'], ref['spikes'])
    assert_grads_close(ours, ref, names=('x',))


@pytest.mark.cuda
def test_cuda_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = ConvBNLIF('cupy').cuda()
    x = torch.randn(2, 3, 3, 8, 8, device='cuda') + 0.5
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_spikes_rebuilt_from_h(dtype):
    check_spikes_rebuilt(dtype, 'cuda')


@pytest.mark.cuda
def test_cuda_channels_last_compiled_model():
    """A conv-BN-LIF/PLIF stack in channels-last, compiled (fullgraph) on the kernels, equals the eager torch
    backend; the neurons' spikes keep the channels-last frames (no copy to NCHW between convolutions)."""
    torch.manual_seed(0)
    ref_model = ConvBNLIF('torch').cuda().to(memory_format=torch.channels_last)
    model = set_backend(copy.deepcopy(ref_model), 'cupy')
    x = _layouts((2, 3, 3, 16, 16))['channels_last'].cuda().add_(0.5)
    strides = {}

    def keep_stride(name):
        return lambda module, args, out: strides.setdefault(name, out.stride()) and None

    for name, m in (('ref', ref_model), ('ours', model)):
        m.lif1.register_forward_hook(keep_stride(name))
    ref = ref_model(x)
    ref.sum().backward()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    eager = model(x)
    torch.testing.assert_close(eager, ref, rtol=1e-4, atol=1e-5)
    assert strides['ours'] == strides['ref'] and strides['ref'][2] == 1          # C innermost: channels-last


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', LOW, ids=str)
@pytest.mark.parametrize('cfg', [c for c in CONFIGS if c.charge == 'plif' and c.surrogate in ('sigmoid', 'atan')],
                         ids=cfg_id)
def test_cuda_low_precision_plif_w_gradient(cfg, dtype):
    """PLIF's dL/dw on a layer-sized bfloat16 / float16 input equals the torch backend (float32 arithmetic on the same
    inputs) to float32 rounding, well within the 1e-2 bound (16-bit H made it up to 36% off)."""
    x, v0, w, grad_s, grad_v = inputs(cfg, shape=(4, 16, 2048), dtype=dtype)
    ref = run(torch_backend, cfg, x, v0, w, grad_s, grad_v)
    ours = cuda_run(cfg, x, v0, w, grad_s, grad_v)
    assert abs(ours['w'] - ref['w']) <= 1e-2 * abs(ref['w'])
    assert_grads_close(ours, ref, names=('w',), rtol=1e-4)


@pytest.mark.cuda
def test_cuda_non_default_stream():
    cfg = NeuronConfig(charge='plif', v_reset=None)
    x, v0, w, grad_s, grad_v = inputs(cfg, shape=(8, 64, 1024))
    ref = cuda_run(cfg, x, v0, w, grad_s, grad_v)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)      # the side stream's copies land late: a launch elsewhere reads garbage
        ours = cuda_run(cfg, x, v0, w, grad_s, grad_v)
    torch.cuda.synchronize()
    for key in ('spikes', 'v', 'x', 'v0', 'w'):
        assert torch.equal(ours[key], ref[key]), key


@pytest.mark.cuda
def test_cuda_second_device():
    if torch.cuda.device_count() < 2:
        pytest.skip('needs two GPUs')
    cfg = NeuronConfig(surrogate='atan', alpha=2.0)
    x, v0, w, grad_s, grad_v = inputs(cfg, shape=(4, 32, 1000))
    results = []
    for index in (0, 1):
        dev = torch.device('cuda', index)
        with torch.cuda.device(1 - index):                               # the current device is the other one
            out = run(lambda *a: snn_cuda.neuron_multistep(*a), cfg, x.to(dev), v0.to(dev), w.to(dev),
                      grad_s.to(dev), grad_v.to(dev))
        assert out['spikes'].device == dev
        results.append({k: None if v is None else v.cpu() for k, v in out.items()})
    for key in ('spikes', 'v', 'x', 'v0'):
        assert torch.equal(results[0][key], results[1][key]), key
