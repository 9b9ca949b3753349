"""Gradient modes (snnzoo.layers.grad_modes): exact mode against plain BPTT on every family's reference fixture, SLTT
and OTTT against their rules written out by hand in float64, memory relations measured in one run, and bad input."""
import copy
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snnzoo
from snnzoo.layers import LIFNode, set_stateful
from snnzoo.layers.grad_modes import GRAD_MODES, _per_step_execution, forward_backward, set_grad_mode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
from bench_memory import kept_after_forward, peak_allocated  # noqa: E402

# one fixture per family (the reference models of shared/reference/fixtures, float64)
FIXTURES = ['spikformer/cifar10_e32_d1_h2_T2_img32', 'spikformer_cml/cifar_e32_d1_t2_img32_nc10',
            'spikingformer/imagenet_e32_d1_h2_T2_img64', 'spikingformer_cml/cifar10dvs_e32_d1_t2_img128_nc10',
            'sdt_v1/sdt_8_384_small', 'sdt_v1/sdt_2_256_gesture_small', 'meta_spikeformer/meta_spikeformer_8_384_small',
            'qkformer/imagenet_e64_d4_t2_img64_nc10', 'sew_resnet/sew_resnet18_add_l1111_T2_64',
            'ms_resnet/ms_resnet18_l1111_T2_64']


def _fixture_model(fx):
    meta = fx['meta']['snnzoo']
    model = snnzoo.create_model(meta['name'], **dict(meta['kwargs'], backend='torch')).double()
    return snnzoo.load_checkpoint(model, fx['state_dict'])


def _first(out):
    return out[0] if isinstance(out, list) else out


def _train_step(model, x, seed=0):
    """Gradients and buffers after one training forward / backward of a fixed probe loss."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = _first(model(x))
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            {n: b.clone() for n, b in model.named_buffers()})


@pytest.mark.parametrize('name', FIXTURES)
def test_exact_mode_equals_bptt_on_reference_models(load_fixture, name):
    """Checkpointed blocks + rebuilt spikes: every parameter gradient and every BatchNorm buffer as plain BPTT's
    (float64, 1e-12), and the per-step execution of SLTT / OTTT reproduces the eval-mode output of each step."""
    fx = load_fixture(name)
    model, x = _fixture_model(fx).train(), fx['input'].double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads_bptt, buffers_bptt = _train_step(model.set_grad_mode('bptt') or model, x)
    model.load_state_dict(state)
    model.set_grad_mode('exact')
    grads, buffers = _train_step(model, x)
    assert grads.keys() == grads_bptt.keys() and len(grads) == len(list(model.parameters()))
    for n, g in grads.items():
        assert (g - grads_bptt[n]).abs().max() <= 1e-12, n
    for n, b in buffers.items():
        assert (b.double() - buffers_bptt[n].double()).abs().max() <= 1e-12, n

    # per step, from detached membranes: the same values as the whole sequence at once
    model.load_state_dict(state)
    model.set_grad_mode('sltt')
    model.eval()
    with torch.no_grad():
        full = _first(model(x, return_per_step=True))
        T = x.shape[1] if x.dim() == 5 else model.T
        with _per_step_execution(model, None):
            steps = [_first(model(x[:, t:t + 1] if x.dim() == 5 else x, return_per_step=True)) for t in range(T)]
    assert torch.equal(torch.cat(steps), full)


def test_exact_mode_keeps_dropout_and_drop_path_randomness():
    """With drop-path and dropout active, recomputation replays the same random masks (torch's preserve_rng_state)."""
    model = snnzoo.create_model('spikformer_4_384_cifar', embed_dim=32, depth=2, num_heads=2, T=2, backend='torch',
                                drop_path_rate=0.5, drop_rate=0.3).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads_bptt, _ = _train_step(model, x, seed=3)
    model.load_state_dict(state)
    model.set_grad_mode('exact')
    grads, _ = _train_step(model, x, seed=3)
    for n, g in grads.items():
        assert (g - grads_bptt[n]).abs().max() <= 1e-12, n


class TinySNN(nn.Module):
    """Linear -> (BatchNorm) -> LIF -> Linear -> LIF -> Linear readout, averaged over T; ``x`` a static image
    ``[B, 1, 2, 3]`` (repeated T times) or frames ``[B, T, 1, 2, 3]``, flattened to 6 features."""

    def __init__(self, T: int, bn: bool = False):
        super().__init__()
        self.T = T
        self.fc1, self.lif1 = nn.Linear(6, 8), LIFNode(tau=2.0, backend='torch')
        self.bn1 = nn.BatchNorm1d(8) if bn else nn.Identity()
        self.fc2, self.lif2 = nn.Linear(8, 5), LIFNode(tau=2.0, backend='torch')
        self.head = nn.Linear(5, 3)

    def forward(self, x, return_per_step=False):
        x = x.flatten(-3)
        x = x.transpose(0, 1) if x.dim() == 3 else x.unsqueeze(0).expand(self.T, *x.shape)
        z = self.fc1(x)
        z = self.bn1(z.flatten(0, 1)).view_as(z)
        out = self.head(self.lif2(self.fc2(self.lif1(z))))
        return out if return_per_step else out.mean(0)


def _tiny(T=5, seed=0, bn=False):
    torch.manual_seed(seed)
    model = TinySNN(T, bn).double()
    with torch.no_grad():  # strong enough weights for every layer to fire
        for fc in (model.fc1, model.fc2):
            fc.weight.mul_(2.0)
            fc.bias.copy_(torch.linspace(0.2, 2.5, len(fc.bias)))
    return model


class _Spike(torch.autograd.Function):
    """Heaviside forward; backward the sigmoid surrogate (alpha 4) written out: 4 sigmoid(4u) (1 - sigmoid(4u))."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u >= 0).double()

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        sg = torch.sigmoid(4.0 * u)
        return grad * 4.0 * sg * (1 - sg)


def _reference_step_rule(model, x, y, chosen, trace_decay=None):
    """SLTT (``trace_decay=None``) or OTTT by hand: a per-step loop over t with the membranes V detached between steps,
    LIF H = V + (X - V) / tau, hard reset to 0, loss CE(o_t, y) / T back-propagated at the ``chosen`` steps.
    OTTT: the weight gradient of each linear layer whose input is binary is sum_t g[t] a[t]^T with the trace
    a[t] = lambda a[t-1] + s[t] and g[t] the gradient at the layer's output (its input's gradient as SLTT's).
    A BatchNorm after fc1 (``model.bn1``) normalises with the mean / variance over all T x B of fc1's outputs, computed
    at step t from step t's outputs and the other steps' detached (the paths between steps dropped)."""
    T, params = model.T, dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    layers = ['fc1', 'fc2', 'head']
    v = [torch.zeros(x.shape[0], 8, dtype=torch.float64), torch.zeros(x.shape[0], 5, dtype=torch.float64)]
    traces = [None, None, None]
    frames = [(x[:, t] if x.dim() == 5 else x).flatten(1) for t in range(T)]
    fc1_all = [F.linear(f, params['fc1.weight'], params['fc1.bias']) for f in frames]
    for t in range(T):
        inputs, outputs = [], []
        h = frames[t]
        for i, name in enumerate(layers):
            inputs.append(h)
            z = fc1_all[t] if i == 0 else F.linear(h, params[f'{name}.weight'], params[f'{name}.bias'])
            outputs.append(z)
            if i == 0 and 'bn1.weight' in params:
                var, mean = torch.var_mean(torch.cat([o if s == t else o.detach() for s, o in enumerate(fc1_all)]),
                                           0, unbiased=False)
                z = (z - mean) / torch.sqrt(var + model.bn1.eps) * params['bn1.weight'] + params['bn1.bias']
            if i < 2:
                u = v[i] + (z - v[i]) / 2.0
                s = _Spike.apply(u - 1.0)
                v[i] = (u * (1 - s)).detach()
                h = s
        if trace_decay is not None:
            traces = [inp.detach() if a is None else trace_decay * a + inp.detach() for a, inp in zip(traces, inputs)]
        if t not in chosen:
            continue
        loss = F.cross_entropy(outputs[-1], y) / T
        if trace_decay is None:
            step = torch.autograd.grad(loss, list(params.values()))
            for n, g in zip(params, step):
                grads[n] += g
            continue
        others = [n for n in params if n.split('.')[0] not in layers]   # BatchNorm: its own gradient, as SLTT's
        g_all = torch.autograd.grad(loss, outputs + [params[n] for n in others])
        for n, g in zip(others, g_all[len(outputs):]):
            grads[n] += g
        for name, g, inp, a in zip(layers, g_all, inputs, traces):
            binary = bool(((inp == 0) | (inp == 1)).all())
            grads[f'{name}.weight'] += g.T @ (a if binary else inp.detach())
            grads[f'{name}.bias'] += g.sum(0)
    return grads


def _mode_grads(model, x, y, mode, **opts):
    model.zero_grad(set_to_none=True)
    set_grad_mode(model, mode, **opts)
    forward_backward(model, x, y, F.cross_entropy)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('frames', [False, True], ids=['static', 'frames'])
def test_sltt_equals_hand_written_rule(frames):
    model = _tiny(T=5)
    torch.manual_seed(0)
    x = torch.rand(4, *((5,) if frames else ()), 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    ref = _reference_step_rule(model, x, y, chosen=set(range(5)))
    grads = _mode_grads(model, x, y, 'sltt')
    assert all(ref[n].abs().sum() > 0 for n in ref)
    for n in ref:
        assert (grads[n] - ref[n]).abs().max() <= 1e-12, n
    # SLTT is not BPTT: the temporal path through V is really dropped
    bptt = _mode_grads(model, x, y, 'bptt')
    assert (bptt['fc1.weight'] - grads['fc1.weight']).abs().max() > 1e-6


def test_sltt_k_back_propagates_k_random_steps():
    model = _tiny(T=6)
    torch.manual_seed(2)
    x, y = torch.rand(4, 1, 2, 3, dtype=torch.float64), torch.tensor([2, 0, 1, 1])
    random.seed(7)
    chosen = set(random.sample(range(6), 2))
    ref = _reference_step_rule(model, x, y, chosen=chosen)
    random.seed(7)
    grads = _mode_grads(model, x, y, 'sltt', k=2)
    assert all(ref[n].abs().sum() > 0 for n in ref)
    for n in ref:
        assert (grads[n] - ref[n]).abs().max() <= 1e-12, n


@pytest.mark.parametrize('binary_input', [True, False], ids=['spike_input', 'real_input'])
def test_ottt_equals_hand_written_rule(binary_input):
    """Presynaptic traces (lambda = 1 - 1/tau = 0.5) for the layers fed by spikes; a real-valued input layer keeps
    its instantaneous input."""
    model = _tiny(T=5)
    torch.manual_seed(3)
    x = torch.rand(4, 5, 1, 2, 3, dtype=torch.float64)
    x = (x > 0.5).double() if binary_input else x
    y = torch.tensor([1, 2, 0, 0])
    ref = _reference_step_rule(model, x, y, chosen=set(range(5)), trace_decay=0.5)
    grads = _mode_grads(model, x, y, 'ottt')
    assert all(ref[n].abs().sum() > 0 for n in ref)
    for n in ref:
        assert (grads[n] - ref[n]).abs().max() <= 1e-12, n
    sltt = _reference_step_rule(model, x, y, chosen=set(range(5)))
    assert (sltt['head.weight'] - grads['head.weight']).abs().max() > 1e-6   # the traces do change the gradient


@pytest.mark.parametrize('mode', ['sltt', 'ottt'])
def test_sequence_batchnorm_statistics_reproduce_bptt_forward(mode):
    """bn_stats='sequence' (float64, a SEW-ResNet with BatchNorm after every conv, T=3): the per-step pass's logits
    equal BPTT's forward and the BatchNorm running buffers end equal to BPTT's (one update per batch); per-step
    statistics ('step') give other logits and T updates."""
    torch.manual_seed(0)
    model = snnzoo.create_model('sew_resnet_gesture', num_classes=4, in_chans=1, img_size=16, channels=[4, 8],
                                connect_f='ADD', T=3).double().train()
    x, y = torch.randn(4, 1, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    bptt = copy.deepcopy(model)
    with torch.no_grad():
        ref = bptt(x)
    outs = {}
    for stats in ('sequence', 'step'):
        m = copy.deepcopy(model)
        set_grad_mode(m, mode, bn_stats=stats)
        outs[stats], _ = forward_backward(m, x, y, F.cross_entropy)
        buffers = dict(m.named_buffers())
        same = all(torch.allclose(b, buffers[n], rtol=0, atol=1e-12) for n, b in bptt.named_buffers())
        assert same == (stats == 'sequence'), stats
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if 'head' in n)
    assert (outs['sequence'] - ref).abs().max() <= 1e-12
    assert (outs['step'] - ref).abs().max() > 1e-3


@pytest.mark.parametrize('mode', ['sltt', 'ottt'])
def test_sequence_batchnorm_gradient_equals_hand_written_rule(mode):
    """bn_stats='sequence' back-propagates through each step's own share of the statistics over T x B: the gradient
    equals the rule written with the statistics of a concatenation in which the other steps are detached."""
    model = _tiny(T=4, bn=True).train()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.linspace(0.5, 1.5, 8))
        model.bn1.bias.copy_(torch.linspace(0.6, 1.2, 8))
    torch.manual_seed(4)
    x, y = torch.rand(6, 4, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0, 2])
    ref = _reference_step_rule(model, x, y, chosen=set(range(4)), trace_decay=0.5 if mode == 'ottt' else None)
    grads = _mode_grads(model, x, y, mode, bn_stats='sequence')
    assert all(ref[n].abs().sum() > 0 for n in ref)
    for n in ref:
        assert (grads[n] - ref[n]).abs().max() <= 1e-12, n
    # the statistics' gradient is really there: treating them as constants changes fc1's gradient
    with torch.no_grad():
        var, mean = torch.var_mean(model.fc1(x.flatten(2)).flatten(0, 1), 0, unbiased=False)
    constant = copy.deepcopy(model)
    bn = constant.bn1
    bn.forward = lambda z: F.batch_norm(z, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert (_mode_grads(constant, x, y, mode, bn_stats='step')['fc1.weight'] - grads['fc1.weight']).abs().max() > 1e-6
    with pytest.raises(ValueError, match=r"valid values are \['step', 'sequence'\]"):
        set_grad_mode(model, 'sltt', bn_stats='batch')


@pytest.mark.parametrize('mode', ['sltt', 'ottt'])
@pytest.mark.parametrize('stats', ['sequence', 'step'])
def test_per_step_modes_under_bfloat16_autocast(mode, stats):
    """CPU bfloat16 autocast (trainer.amp): the statistics over the sequence are kept in float32, as BatchNorm keeps
    them (bfloat16 statistics beside float32 weights were refused by batch_norm), and every gradient is finite."""
    torch.manual_seed(0)
    model = snnzoo.create_model('sew_resnet_gesture', num_classes=4, in_chans=1, img_size=16, channels=[4, 8],
                                connect_f='ADD', T=3).train()
    set_grad_mode(model, mode, bn_stats=stats)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    out, loss = forward_backward(model, x, y, F.cross_entropy, autocast=torch.autocast('cpu', dtype=torch.bfloat16))
    assert out.shape == (4, 4) and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(float(m.weight.grad.abs().sum()) > 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_memory_relations_in_one_run():
    """Measured in one process (allocations from the profiler's record): BPTT keeps more with T, exact mode keeps less
    than BPTT, SLTT's peak over a whole training step stays flat in T and under BPTT's."""
    model = snnzoo.create_model('sew_resnet18', layers=[1, 1, 1, 1], num_classes=10, img_size=64, backend='torch')
    model.train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    kept, peak = {}, {}
    for T in (2, 8):
        model.T = T
        for mode in ('bptt', 'exact', 'sltt'):
            set_grad_mode(model, mode)
            forward_backward(model, x, y, F.cross_entropy)                      # gradients allocated
            peak[mode, T] = peak_allocated(lambda: forward_backward(model, x, y, F.cross_entropy))
            if mode != 'sltt':
                kept[mode, T] = kept_after_forward(lambda: model(x))
    assert kept['bptt', 8] > 2.5 * kept['bptt', 2]
    assert kept['exact', 8] < 0.6 * kept['bptt', 8]
    assert peak['sltt', 8] < 1.1 * peak['sltt', 2]
    assert peak['sltt', 8] < 0.6 * peak['bptt', 8]


def test_trainer_step_in_sltt_mode_drives_the_loop_function():
    """forward_backward returns logits averaged over T and the summed per-step loss, and accumulates gradients."""
    model = _tiny(T=4)
    x, y = torch.rand(3, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 1, 2])
    set_grad_mode(model, 'sltt')
    model.eval()
    with torch.no_grad():
        expected_out = model(x, return_per_step=True)
    out, loss = forward_backward(model, x, y, F.cross_entropy)
    assert torch.equal(out, expected_out.mean(0))
    assert abs(loss.item() - sum(F.cross_entropy(o, y).item() for o in expected_out) / 4) < 1e-12
    out_tet, _ = forward_backward(model, x, y, lambda o, t: F.cross_entropy(o.mean(0), t), per_step_output=True)
    assert torch.equal(out_tet, expected_out)


def test_bad_modes_and_combinations_fail_naming_the_options():
    model = _tiny()
    with pytest.raises(ValueError, match=r"valid modes are \['bptt', 'exact', 'sltt', 'ottt'\]"):
        set_grad_mode(model, 'online')
    with pytest.raises(ValueError, match="needs grad mode 'sltt'"):
        set_grad_mode(model, 'bptt', k=2)
    set_stateful(model, True)
    with pytest.raises(ValueError, match="stateful=True"):
        set_grad_mode(model, 'sltt')
    spikformer = snnzoo.create_model('spikformer_4_384_cifar', embed_dim=32, depth=1, num_heads=2, T=2)
    with pytest.raises(ValueError, match="SpikingSelfAttention multiplies spikes by spikes.*'sltt'"):
        spikformer.set_grad_mode('ottt')
    with pytest.raises(ValueError, match="integer attribute T"):
        set_grad_mode(nn.Sequential(nn.Linear(2, 2), LIFNode()), 'sltt')
    assert GRAD_MODES == ('bptt', 'exact', 'sltt', 'ottt')


def test_training_loop_runs_every_mode(tmp_path):
    """``trainer.grad_mode`` through the Hydra loop (a few steps, with TET, accumulation and clipping); the same
    first step in BPTT and exact mode; unknown modes and compile with a per-step mode refused with the options."""
    pytest.importorskip('hydra')
    from test_train import TINY, _train_cfg
    from snnzoo.train.loop import run_training

    common = [*TINY, 'loss=tet', 'loss.tet_lamb=0.05', 'trainer.clip_grad=1.0', 'trainer.accum_steps=2',
              'trainer.max_steps=1', 'energy.enabled=false', 'trainer.eval_every_n_epochs=0']
    losses = {}
    for mode in GRAD_MODES:
        result = run_training(_train_cfg(tmp_path / mode, *common, f'trainer.grad_mode={mode}'))
        assert result['global_step'] == 1
        losses[mode] = result['test_loss']
    assert losses['exact'] == losses['bptt']
    result = run_training(_train_cfg(tmp_path / 'k', *common, 'trainer.grad_mode=sltt', 'trainer.sltt_k=1'))
    assert result['global_step'] == 1
    with pytest.raises(ValueError, match=r"valid modes are \['bptt', 'exact', 'sltt', 'ottt'\]"):
        run_training(_train_cfg(tmp_path / 'bad', *common, 'trainer.grad_mode=online'))
    with pytest.raises(ValueError, match='trainer.compile=true cannot be combined with trainer.grad_mode=sltt'):
        run_training(_train_cfg(tmp_path / 'compile', *common, 'trainer.grad_mode=sltt', 'trainer.compile=true'))


@pytest.mark.cuda
@pytest.mark.parametrize('mode', ['exact', 'sltt', 'ottt'])
def test_grad_modes_on_cupy_kernels_match_torch(mode):
    """Every mode on the fused CUDA kernels (the per-step modes: one-step calls from a given membrane) gives the
    torch backend's gradients to float32 rounding."""
    from snnzoo.layers import set_backend
    model = snnzoo.create_model('sew_resnet18', layers=[1, 1, 1, 1], num_classes=10, img_size=32, T=4).cuda().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32, device='cuda'), torch.tensor([0, 1, 2, 3], device='cuda')
    grads = {}
    for backend in ('torch', 'cupy'):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        set_grad_mode(set_backend(model, backend), mode)
        forward_backward(model, x, y, F.cross_entropy)
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n, g in grads['torch'].items():
        torch.testing.assert_close(grads['cupy'][n], g, rtol=1e-4, atol=1e-6, msg=n)
