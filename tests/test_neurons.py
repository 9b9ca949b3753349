"""The multi-step neurons against SpikingJelly 2.0's nodes (an independent implementation) and float64 recomputation."""
import itertools
import math
import subprocess
import sys
import zlib

import pytest
import torch

import snnzoo
from snnzoo.layers import (IFNode, LIFNode, ParametricLIFNode, channels_last_frames, reset_net, set_backend,
                           set_stateful)

sj_neuron = pytest.importorskip('spikingjelly.activation_based.neuron')
sj_surrogate = pytest.importorskip('spikingjelly.activation_based.surrogate')
sj_functional = pytest.importorskip('spikingjelly.activation_based.functional')

SURROGATES = ('sigmoid', 'atan', 'rectangle', 'piecewise_quadratic')
KINDS = ('lif', 'if', 'plif')


def sj_surrogate_of(name, alpha):
    """SpikingJelly's surrogate equal to ours: its Rect takes the height 1/width, ours the width."""
    return {'sigmoid': lambda: sj_surrogate.Sigmoid(alpha=alpha),
            'atan': lambda: sj_surrogate.ATan(alpha=alpha),
            'rectangle': lambda: sj_surrogate.Rect(alpha=1.0 / alpha),
            'piecewise_quadratic': lambda: sj_surrogate.PiecewiseQuadratic(alpha=alpha)}[name]()


def make_pair(kind, surrogate, v_reset, decay_input, detach_reset, gen):
    alpha = float(torch.empty(()).uniform_(0.5, 4.0, generator=gen))
    v_threshold = float(torch.empty(()).uniform_(0.3, 1.5, generator=gen))
    tau = float(torch.empty(()).uniform_(1.2, 4.0, generator=gen))
    if v_reset is not None and v_reset >= v_threshold:
        v_reset = v_threshold - 1.0
    sg = sj_surrogate_of(surrogate, alpha)
    common = dict(v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset)
    if kind == 'lif':
        ours = LIFNode(tau=tau, decay_input=decay_input, surrogate=surrogate, alpha=alpha, backend='torch', **common)
        ref = sj_neuron.LIFNode(tau=tau, decay_input=decay_input, surrogate_function=sg, step_mode='m', **common)
    elif kind == 'plif':
        ours = ParametricLIFNode(init_tau=tau, decay_input=decay_input, surrogate=surrogate, alpha=alpha,
                                 backend='torch', **common)
        ref = sj_neuron.ParametricLIFNode(init_tau=tau, decay_input=decay_input, surrogate_function=sg,
                                          step_mode='m', **common)
    else:
        ours = IFNode(surrogate=surrogate, alpha=alpha, backend='torch', **common)
        ref = sj_neuron.IFNode(surrogate_function=sg, step_mode='m', **common)
    return ours.double(), ref.double()


GRID = [case for case in itertools.product(KINDS, SURROGATES, (0.0, None, -0.5), (True, False), (False, True),
                                           (1, 3, 8))
        if case[0] != 'if' or case[3]]  # IF has no decay_input option


@pytest.mark.parametrize('kind,surrogate,v_reset,decay_input,detach_reset,T', GRID)
def test_matches_spikingjelly(kind, surrogate, v_reset, decay_input, detach_reset, T):
    case = repr((kind, surrogate, v_reset, decay_input, detach_reset, T))
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))  # the same inputs in every run
    ours, ref = make_pair(kind, surrogate, v_reset, decay_input, detach_reset, gen)
    x = (torch.randn(T, 4, 33, generator=gen, dtype=torch.float64) * 1.5 + 0.5)
    probe = torch.randn(T, 4, 33, generator=gen, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s1, s2 = ours(x1), ref(x2)
    assert torch.equal(s1, s2), 'spikes differ from SpikingJelly'
    assert s1.dtype == x.dtype and s1.shape == x.shape
    (s1 * probe).sum().backward()
    (s2 * probe).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-9)
    if kind == 'plif':
        torch.testing.assert_close(ours.w.grad, ref.w.grad, rtol=0, atol=1e-9)


@pytest.mark.parametrize('kind,decay_input,v_reset',
                         list(itertools.product(('lif', 'plif'), (True, False), (0.0, -0.3, None))))
def test_membrane_bit_equal_to_spikingjelly_in_float32(kind, decay_input, v_reset):
    """V[T] of a stateful node equals SpikingJelly's bit for bit in float32 (the charge keeps its operation order)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 2000, generator=gen) * 1.5 + 0.4
    if kind == 'lif':
        ours = LIFNode(tau=4 / 3, decay_input=decay_input, v_reset=v_reset, stateful=True, backend='torch')
        ref = sj_neuron.LIFNode(tau=4 / 3, decay_input=decay_input, v_reset=v_reset, step_mode='m')
    else:
        ours = ParametricLIFNode(init_tau=1.7, decay_input=decay_input, v_reset=v_reset, stateful=True,
                                 backend='torch')
        ref = sj_neuron.ParametricLIFNode(init_tau=1.7, decay_input=decay_input, v_reset=v_reset, step_mode='m')
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours.v, ref.v)


def test_plif_weight_init_and_decay():
    node = ParametricLIFNode(init_tau=3.0)
    assert node.w.item() == pytest.approx(-math.log(2.0))
    assert node.decay().item() == pytest.approx(1 / 3)
    assert [n for n, _ in node.named_parameters()] == ['w']


def lif_float64_reference(x, tau, decay_input, v_th, v_reset):
    """A direct, step-by-step recomputation of the SPEC section 3 equations."""
    v = torch.full_like(x[0], 0.0 if v_reset is None else v_reset)
    out = []
    for xt in x:
        r = 0.0 if v_reset is None else v_reset
        h = v + (xt - (v - r)) / tau if decay_input else v - (v - r) / tau + xt
        s = (h >= v_th).to(x.dtype)
        v = h * (1 - s) + r * s if v_reset is not None else h - v_th * s
        out.append(s)
    return torch.stack(out)


def test_ms_resnet_neuron_equals_its_own_formula():
    """MS-ResNet: mem = 0.25 mem (1 - spike) + x, spike = mem > 0.5, rectangle surrogate of width 1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 50, generator=gen, dtype=torch.float64, requires_grad=True)
    node = LIFNode(tau=4 / 3, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True,
                   surrogate='rectangle', backend='torch')
    spikes = node(x)
    mem, spike, expected = 0.0, 0.0, []
    xd = x.detach()
    for t in range(x.shape[0]):
        mem = 0.25 * mem * (1 - spike) + xd[t]
        spike = (mem > 0.5).double()
        expected.append(spike)
    assert torch.equal(spikes, torch.stack(expected))
    # gradient of sum(spikes[-1]) w.r.t. x[-1] is the rectangle window |mem - 0.5| < 0.5 (height 1)
    spikes[-1].sum().backward()
    window = ((mem - 0.5).abs() < 0.5).double()
    torch.testing.assert_close(x.grad[-1], window, rtol=0, atol=1e-12)


@pytest.mark.parametrize('v_reset', [0.0, None])
def test_lif_equals_float64_recomputation(v_reset):
    x = torch.randn(7, 5, 11, dtype=torch.float64) + 0.6
    node = LIFNode(tau=1.7, decay_input=False, v_threshold=0.8, v_reset=v_reset, backend='torch')
    assert torch.equal(node(x), lif_float64_reference(x, 1.7, False, 0.8, v_reset))


def test_stateless_calls_are_identical():
    x = torch.randn(4, 8, 16) + 0.5
    node = LIFNode()
    first = node(x)
    assert node.v is None
    assert torch.equal(node(x), first)


@pytest.mark.parametrize('cls', [LIFNode, IFNode, ParametricLIFNode])
def test_stateful_continues_one_long_call(cls):
    x = torch.randn(9, 3, 10, dtype=torch.float64) + 0.4
    node = cls(stateful=True).double()
    whole = cls().double()(x)
    parts = torch.cat([node(x[:4]), node(x[4:5]), node(x[5:])])
    assert torch.equal(parts, whole)
    reset_net(node)
    assert node.v is None
    assert torch.equal(node(x), whole)


def test_stateful_gradient_flows_across_calls():
    x = (torch.randn(6, 2, 5, dtype=torch.float64) + 0.5).requires_grad_()
    probe = torch.randn(6, 2, 5, dtype=torch.float64)
    whole = LIFNode(tau=1.5, surrogate='atan').double()
    (whole(x) * probe).sum().backward()
    g_whole = x.grad.clone()
    x.grad = None
    node = LIFNode(tau=1.5, surrogate='atan', stateful=True).double()
    out = torch.cat([node(x[:2]), node(x[2:])])
    (out * probe).sum().backward()
    torch.testing.assert_close(x.grad, g_whole, rtol=0, atol=1e-12)


def test_state_never_in_state_dict():
    net = torch.nn.Sequential(LIFNode(stateful=True), ParametricLIFNode(stateful=True))
    net(torch.randn(3, 2, 4))
    assert list(net.state_dict()) == ['1.w']


def test_set_backend_and_set_stateful():
    net = torch.nn.Sequential(LIFNode(), torch.nn.Identity(), IFNode())
    set_backend(net, 'torch')
    assert [m.backend for m in (net[0], net[2])] == ['torch', 'torch']
    with pytest.raises(ValueError, match="valid backends"):
        set_backend(net, 'triton')
    set_stateful(net)
    net(torch.randn(2, 1, 3))
    assert net[0].v is not None
    set_stateful(net, False)
    assert net[0].v is None and not net[0].stateful


@pytest.mark.parametrize('make,match', [
    (lambda: LIFNode()(torch.randn(5)), r'rank >= 2'),
    (lambda: LIFNode()(torch.ones(2, 3, dtype=torch.long)), r'floating-point'),
    (lambda: LIFNode(surrogate='relu'), r"valid surrogates are \['atan', 'piecewise_quadratic', 'rectangle', "),
    (lambda: IFNode(backend='jax'), r"valid backends are \['auto', 'torch', 'cupy'\]"),
    (lambda: LIFNode(tau=1.0), r'tau > 1'),
    (lambda: LIFNode(tau=0.5), r'tau > 1'),
    (lambda: ParametricLIFNode(init_tau=1.0), r'init_tau > 1'),
    (lambda: LIFNode(v_threshold=1.0, v_reset=1.0), r'v_reset=None for a soft reset'),
    (lambda: LIFNode(alpha=-1.0), r'alpha must be positive'),
])
def test_bad_input_is_explained(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_stateful_shape_change_is_explained():
    node = LIFNode(stateful=True)
    node(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match='reset_net'):
        node(torch.randn(2, 5, 4))


def test_cupy_backend_on_cpu_names_the_fix():
    with pytest.raises(RuntimeError, match="backend='torch'"):
        LIFNode(backend='cupy')(torch.randn(2, 3))


def test_auto_backend_uses_torch_on_cpu():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    assert torch.equal(LIFNode(backend='auto')(x), LIFNode(backend='torch')(x))


@pytest.mark.parametrize('make', [LIFNode, IFNode, ParametricLIFNode])
def test_steps_keep_the_input_layout(make):
    """Channels-last frames (and a time-expanded static map) give channels-last spikes and input gradients with the
    same values as the contiguous computation."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 3, 5, 6, generator=gen, dtype=torch.float64) + 0.5
    probe = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    frames_cl = channels_last_frames(x)
    static_cl = x[0].contiguous(memory_format=torch.channels_last).expand(4, -1, -1, -1, -1)
    for inp, ref_in in ((frames_cl, x), (static_cl, x[:1].expand(4, -1, -1, -1, -1).contiguous())):
        node = make(surrogate='atan', backend='torch')
        a, b = inp.detach().requires_grad_(), ref_in.detach().requires_grad_()
        sa, sb = node(a), node(b)
        assert sa.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(sa, sb)
        (sa * probe).sum().backward()
        (sb * probe).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
        if inp is frames_cl:
            assert a.grad.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_low_precision_dtypes_keep_dtype(dtype):
    x = (torch.randn(4, 2, 8) + 0.5).to(dtype).requires_grad_()
    s = LIFNode()(x)
    assert s.dtype == dtype
    s.sum().backward()
    assert x.grad.dtype == dtype


def test_import_is_light():
    code = ("import sys, snnzoo, snnzoo.energy; "
            "bad = [m for m in ('hydra', 'wandb', 'cupy', 'omegaconf', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, f"import snnzoo imported {proc.stdout.strip()} {proc.stderr[-500:]}"


def test_timm_wandb_logging_still_imports_wandb_on_use():
    pytest.importorskip('wandb')
    code = ("import sys, snnzoo, timm.utils.summary as s; assert 'wandb' not in sys.modules; "
            "s.wandb.log; assert 'wandb' in sys.modules")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-800:]


def test_public_api_names():
    assert callable(snnzoo.create_model) and callable(snnzoo.load_checkpoint)
    with pytest.raises(ValueError, match='unknown snnzoo model'):
        snnzoo.create_model('no_such_model_anywhere')
