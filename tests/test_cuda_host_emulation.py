"""The real CUDA kernels, run on the host (tests/cuda_emulator.py), beyond the option x dtype grid of
test_cuda_kernels.py: memory layouts, single steps from a detached v0, inference, indices beyond 2^31 (sparse
buffers), NaN / inf, block sizes, the faults a GPU would raise (and that the emulation catches a broken kernel),
and ``backend='auto'`` falling back from a CuPy whose compiler is broken.

The reference is always snnzoo's torch backend, an independent implementation of the same recurrence.
"""
import mmap
import warnings
from types import SimpleNamespace

import pytest
import torch

import snnzoo.cuda as snn_cuda
from cuda_emulator import CUDA_DIR, Emulator, KernelFault, build, emulator_lib, host_ops  # noqa: F401 (fixtures)
from snnzoo.cuda import kernels, ops
from snnzoo.layers import LIFNode
from snnzoo.layers.neuron import NeuronConfig, neuron_multistep
from test_cuda_kernels import CONFIGS, _layouts, assert_grads_close, cfg_id, run, torch_backend

LIF = NeuronConfig(tau=2.0, detach_reset=True)
PLIF_SOFT = NeuronConfig(charge='plif', v_reset=None, surrogate='atan', alpha=2.0)
IF_PQ = NeuronConfig(charge='if', v_reset=-0.2, surrogate='piecewise_quadratic', alpha=1.0)


def _start(cfg, x, seed=1):
    """v0 in x's step layout, PLIF's w, upstream gradients (in x's dtype for the spikes)."""
    g = torch.Generator().manual_seed(seed)
    v0 = torch.empty_like(x[0], dtype=torch.float32).copy_(torch.randn(x.shape[1:], generator=g) * 0.5)
    return v0, torch.tensor(0.4), torch.randn(x.shape, generator=g).to(x.dtype), torch.randn(x.shape[1:], generator=g)


@pytest.mark.parametrize('cfg', [LIF, PLIF_SOFT], ids=['lif', 'plif'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('layout', ['channels_last', 'permuted', 'offset', 'misaligned'])
def test_layouts_like_the_torch_backend(host_ops, monkeypatch, layout, dtype, cfg):
    """Outputs and gradients keep each step's layout exactly as the torch backend's do (channels-last frames stay
    channels-last), with equal values; a dense input (channels-last, a misaligned view) is read in place, without a
    copy; a misaligned one falls back from 16-byte vectors to scalar accesses."""
    monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    if layout == 'misaligned':
        x = torch.randn(3 * 2 * 4 * 5 * 6 + 1).to(dtype)[1:].view(3, 2, 4, 5, 6)
    else:
        x = _layouts(dtype=dtype)[layout]
    x.mul_(1.5).add_(0.6)
    v0, w, grad_s, grad_v = _start(cfg, x)
    ref = run(torch_backend, cfg, x, v0, w, grad_s, grad_v)
    ours = run(ops.multistep, cfg, x, v0, w, grad_s, grad_v)
    for name in ('spikes', 'v'):
        assert torch.equal(ours[name], ref[name]) and ours[name].stride() == ref[name].stride(), name
    assert ours['x'].stride() == ref['x'].stride()
    if dtype == torch.float32 or cfg.charge == 'plif':              # PLIF's H is float32 in every dtype
        assert_grads_close(ours, ref, rtol=1e-5 if dtype == torch.float32 else 1e-2)
    else:                                                          # the surrogate at a bfloat16 H
        assert_grads_close(ours, ref, names=('v0',), rtol=0.05, atol=0.05)
        assert (ours['x'].float() - ref['x'].float()).norm() < 0.05 * ref['x'].float().norm()
    host_ops.launches.clear()
    ops.multistep(x, v0, w.sigmoid() if cfg.charge == 'plif' else None, cfg)
    [(_, launch, args)] = host_ops.launches
    assert (args[0] == x.data_ptr()) == (layout in ('channels_last', 'misaligned'))   # in place iff steps are dense
    assert launch.vec == (layout != 'misaligned')


@pytest.mark.parametrize('cfg', [LIF, PLIF_SOFT, IF_PQ], ids=['lif', 'plif', 'if'])
def test_single_steps_from_a_detached_v0(host_ops, cfg):
    """T=1 calls chained through a detached V (the per-step backward of SLTT-style training): every step equals the
    torch backend (spikes, V, dL/dx, dL/dv0, dL/dw), and the chained spikes equal one call over all T."""
    x = torch.randn(5, 3, 40) * 1.5 + 0.6
    v = None
    steps = []
    for t in range(x.shape[0]):
        _, w, grad_s, grad_v = _start(cfg, x[t:t + 1], seed=t)
        ref = run(torch_backend, cfg, x[t:t + 1], v, w, grad_s, grad_v)
        ours = run(ops.multistep, cfg, x[t:t + 1], v, w, grad_s, grad_v)
        assert torch.equal(ours['spikes'], ref['spikes']) and torch.equal(ours['v'], ref['v'])
        assert_grads_close(ours, ref)
        steps.append(ours['spikes'])
        v = ours['v']
    w = torch.tensor(0.4)
    whole = neuron_multistep(x, None, w.sigmoid() if cfg.charge == 'plif' else None, cfg, backend='torch')[0]
    assert torch.equal(torch.cat(steps), whole)
    assert {launch.grid for _, launch, _ in host_ops.launches} == {1}


def test_inference_launches_forward_only_and_writes_no_h(host_ops):
    x = torch.randn(4, 2, 300, requires_grad=True)
    with torch.no_grad():
        spikes, v = ops.multistep(x, None, None, LIF)
    ref = neuron_multistep(x.detach(), None, None, LIF, backend='torch')
    assert torch.equal(spikes, ref[0]) and torch.equal(v, ref[1])
    [(variant, launch, args)] = host_ops.launches
    assert variant.direction == 'fwd' and args[4] == 0 and not int(args[-1]) & ops.F_SAVE_H
    assert launch == ops.Launch(False, 3, 256)                     # 600 neurons: 3 blocks, the last one partial


# ---------------------------------------------------------------------------------------------------------------
# indices beyond 2^31: sparse buffers, a few blocks of the real grid

def _sparse(shape, dtype):
    """An untouched tensor over anonymous memory reserved but not committed (MAP_NORESERVE): pages cost nothing
    until written."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)   # 0x4000: MAP_NORESERVE
    return torch.frombuffer(buffer, dtype=dtype).view(shape)


@pytest.mark.parametrize('case', ['float32-vector-T2', 'bfloat16-scalar-T1'])
def test_indices_beyond_2_31(emulator_lib, case):
    check_huge_launch(Emulator(emulator_lib), case)


def check_huge_launch(emulator, case):
    """A [T, N] launch with N beyond 2^31 (vector path, T=2: offsets past 2^32) and beyond 2^32 (scalar path:
    thread indices past 2^32): the first, a middle and the last block of ops.py's grid, forward and backward, equal
    the torch backend on the neurons those blocks own (and the launch writes them all)."""
    dtype, vec, steps = {'float32-vector-T2': (torch.float32, True, 2),
                         'bfloat16-scalar-T1': (torch.bfloat16, False, 1)}[case]
    n = (1 << 31) + (1 << 12) if vec else (1 << 32) + 259
    cfg = LIF if vec else PLIF_SOFT
    k = torch.tensor(0.4).sigmoid() if cfg.charge == 'plif' else None
    x, spikes, grad_s, grad_x = (_sparse((steps, n), dtype) for _ in range(4))
    h = _sparse((steps, n), torch.float32 if k is not None else dtype)
    v_last, grad_v = _sparse((n,), torch.float32), _sparse((n,), torch.float32)
    partial_k = torch.zeros(-(-n // ops.BLOCK), dtype=torch.float64)
    variant, launch, args = ops.fwd_launch(x, None, k, spikes, h, v_last, cfg.charge, cfg.decay_input, cfg.tau,
                                           cfg.v_threshold, cfg.v_reset)
    assert launch.vec == vec and launch.grid == -(-n // (4 if vec else 1) // ops.BLOCK)
    blocks = [0, launch.grid // 2, launch.grid - 1]
    per_block = launch.block * (16 // dtype.itemsize if vec else 1)
    spans = [slice(b * per_block, min(n, (b + 1) * per_block)) for b in blocks]
    assert spans[-1].stop == n and (steps * n if vec else spans[-1].start) > 1 << 32
    g = torch.Generator().manual_seed(0)
    for span in spans:
        width = span.stop - span.start
        x[:, span] = (torch.randn(steps, width, generator=g) * 1.5 + 0.6).to(dtype)
        grad_s[:, span] = torch.randn(steps, width, generator=g).to(dtype)
        grad_v[span] = torch.randn(width, generator=g)
        for out in (spikes, h, grad_x):
            out[:, span] = float('nan')
    emulator.blocks = blocks
    emulator(variant, launch, args)
    emulator(*ops.bwd_launch(grad_s, grad_v, h, None, k, grad_x, None, partial_k, cfg.charge, cfg.decay_input,
                             cfg.tau, cfg.v_threshold, cfg.v_reset, cfg.detach_reset, cfg.surrogate_id, cfg.alpha))
    grad_k = 0.0
    for span in spans:
        ref = run(torch_backend, cfg, x[:, span], None, torch.tensor(0.4), grad_s[:, span], grad_v[span])
        assert torch.equal(spikes[:, span], ref['spikes']) and torch.equal(v_last[span], ref['v'])
        assert_grads_close(dict(x=grad_x[:, span]), ref, names=('x',), rtol=1e-5 if vec else 1e-2)
        grad_k += 0.0 if k is None else ref['w'].item() / (k * (1 - k)).item()
    if k is not None:
        assert partial_k.sum().item() == pytest.approx(grad_k, rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# NaN and inf: the kernels propagate them exactly as the torch backend does

@pytest.mark.parametrize('cfg', CONFIGS[::3], ids=cfg_id)
def test_nan_and_inf_like_the_torch_backend(host_ops, cfg):
    x = torch.randn(4, 2, 30) * 1.5 + 0.6
    x[0, 0, :3] = torch.tensor([float('nan'), float('inf'), -float('inf')])
    x[2, 1, 10:13] = torch.tensor([float('inf'), float('nan'), -float('inf')])
    v0, w, grad_s, grad_v = _start(cfg, x)
    grad_v[1, 5] = float('inf')
    for start in (None, v0):
        ref = run(torch_backend, cfg, x, start, w, grad_s, grad_v)
        ours = run(ops.multistep, cfg, x, start, w, grad_s, grad_v)
        assert ref['v'].isnan().any()                                   # the case is not vacuous
        assert torch.equal(ours['spikes'], ref['spikes'])
        torch.testing.assert_close(ours['v'], ref['v'], rtol=0, atol=0, equal_nan=True)
        for name in ('x', 'v0', 'w'):
            if ref[name] is not None:
                torch.testing.assert_close(ours[name], ref[name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)


# ---------------------------------------------------------------------------------------------------------------
# block sizes and faults

def _plif_backward_launch(n=1000, block=ops.BLOCK):
    """(variant, launch with ``block``, args, tensors) of a PLIF backward over [3, n] float32 tensors (the same
    ones at every call); ``tensors`` keeps them alive and holds the outputs grad_x and partial_k."""
    g = torch.Generator().manual_seed(0)
    x, grad_s = torch.randn(3, n, generator=g) + 0.6, torch.randn(3, n, generator=g)
    k = torch.tensor(0.6)
    _, _, h = torch.ops.snnzoo.neuron_fwd(x, None, k, 'plif', True, 2.0, 1.0, 0.0, False, 0, 4.0, True)
    t = dict(h=h, grad_s=grad_s, k=k, grad_x=torch.full((3, n), float('nan')),
             partial_k=torch.zeros(-(-n // 32), dtype=torch.float64))
    variant, launch, args = ops.bwd_launch(t['grad_s'], None, h, None, k, t['grad_x'], None, t['partial_k'], 'plif',
                                           True, 2.0, 1.0, 0.0, False, 0, 4.0)
    return variant, ops.Launch(launch.vec, -(-n // block), block), args, t


@pytest.mark.parametrize('block', [32, 64, 1024])
def test_any_full_warp_block_size_gives_the_same_result(host_ops, block):
    variant, launch, args, expected = _plif_backward_launch()
    host_ops(variant, launch, args)
    variant, launch, args, ours = _plif_backward_launch(block=block)
    host_ops(variant, launch, args)
    assert torch.equal(ours['grad_x'], expected['grad_x'])
    assert ours['partial_k'].sum().item() == pytest.approx(expected['partial_k'].sum().item(), rel=1e-12)
    partial = ours['partial_k']
    assert partial[launch.grid:].eq(0).all() and partial[:launch.grid].ne(0).all()   # one partial per block


def test_partial_warp_block_faults(host_ops):
    """A block of 48 threads: the block reduction's shuffles would run over a half-empty warp (undefined on a GPU).
    launch_config refuses it; forced, the emulation reports the fault."""
    with pytest.raises(ValueError, match='multiple of 32'):
        ops.launch_config(1000, torch.float32, (), block=48)
    variant, launch, args, *_ = _plif_backward_launch(block=48)
    with pytest.raises(KernelFault, match='partial warp'):
        host_ops(variant, launch, args)


def test_misaligned_vector_launch_faults(host_ops, monkeypatch):
    monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    x, spikes, v_last = torch.randn(3, 1024), torch.empty(3, 1024), torch.empty(1024)
    variant, launch, args = ops.fwd_launch(x, None, None, spikes, None, v_last, 'lif', True, 2.0, 1.0, 0.0)
    assert launch.vec
    host_ops(variant, launch, args)
    shifted = torch.randn(3 * 1024 + 1)[1:]                         # 4 bytes past a 16-byte boundary
    with pytest.raises(KernelFault, match='misaligned 16-byte vector load'):
        host_ops(variant, launch, (shifted.data_ptr(), *args[1:]))
    with pytest.raises(KernelFault, match='misaligned 16-byte vector store'):
        host_ops(variant, launch, (*args[:3], shifted.data_ptr(), *args[4:]))


def test_wrong_indices_in_the_kernel_are_caught(request, tmp_path, monkeypatch):
    """The emulation tests the kernel source itself: a kernel whose vector path forgets the vector width in its
    first neuron index (thread instead of thread * W) faults on a misaligned vector load, as it would on a GPU; one
    whose thread index is computed in 32 bits fails the comparison beyond 2^32 neurons."""
    source = (CUDA_DIR / 'neuron_kernels.cu').read_text()
    mutations = {'forward_lanes<CHARGE, HARD, W>(p, a, thread * W, decay)':
                 'forward_lanes<CHARGE, HARD, W>(p, a, thread, decay)',
                 'static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x':
                 'blockIdx.x * blockDim.x + threadIdx.x'}
    for correct, wrong in mutations.items():
        assert correct in source
        source = source.replace(correct, wrong)
    broken = tmp_path / 'neuron_kernels.cu'
    broken.write_text(source)
    emulator = Emulator(build(request.config.cache.mkdir('snnzoo_cuda_emulator'), broken, optimize=False))
    monkeypatch.setattr(ops, '_HOST_RUN', emulator)
    x = torch.randn(3, 2, 64) + 0.6
    ref = neuron_multistep(x, None, None, LIF, backend='torch')[0]
    assert torch.equal(ops.multistep(x, None, None, LIF)[0], ref)       # small, scalar: the bugs do not show
    monkeypatch.setattr(ops, 'VEC_MIN_THREADS', 1)
    with pytest.raises(KernelFault, match='misaligned 16-byte vector load'):
        ops.multistep(x, None, None, LIF)
    with pytest.raises(AssertionError):
        check_huge_launch(emulator, 'bfloat16-scalar-T1')


# ---------------------------------------------------------------------------------------------------------------
# a broken CuPy under backend='auto' and 'cupy'

def test_auto_falls_back_once_from_a_broken_cupy(monkeypatch):
    """CuPy installed, a GPU present, but NVRTC cannot load: 'auto' warns once (naming the failure and the fix) and
    runs the torch backend; 'cupy' raises with the same explanation."""
    def broken_function(variant, device):
        raise RuntimeError('NVRTC (through CuPy) is not usable here: libnvrtc.so.13: cannot open shared object file')

    monkeypatch.setattr(snn_cuda, 'is_available', lambda x=None: True)
    monkeypatch.setattr(kernels, 'function', broken_function)
    monkeypatch.setattr(snn_cuda, '_PROBED', {})
    monkeypatch.setattr(snn_cuda, '_WARNED', set())
    x = torch.randn(3, 2, 8) + 0.6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        outs = [LIFNode(backend='auto')(x) for _ in range(3)]
    [warning] = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert 'libnvrtc.so.13' in str(warning.message) and "pip install 'snnzoo[cuda]'" in str(warning.message)
    assert "backend='torch'" in str(warning.message)
    ref = LIFNode(backend='torch')(x)
    assert all(torch.equal(out, ref) for out in outs)
    compiled = torch.compile(LIFNode(backend='auto'), fullgraph=True, backend='eager')
    assert torch.equal(compiled(x), ref)                  # the probe is a constant to torch.compile, not traced
    cuda_x = SimpleNamespace(is_cuda=True, dtype=torch.float32, device=torch.device('cuda', 0))
    with pytest.raises(RuntimeError, match=r"backend='cupy'.*libnvrtc\.so\.13.*pip install 'snnzoo\[cuda\]'"):
        snn_cuda.require(cuda_x)
