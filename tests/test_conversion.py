"""ANN-to-SNN conversion (snnzoo.conversion) and the QCFS activation, in float64 against independent computations:
hand-written IF loops and SpikingJelly's IF node, the QCFS formula, the ANN's own activations (exact mode), an
unfolded BatchNorm, and errors for what an IF network cannot do."""
import copy
import json
import math

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import snnzoo
from snnzoo.conversion import BurstIF, SignedIF, SpikeScale, ThresholdIF, convert
from snnzoo.conversion.convert import _Tracer, _fold_batchnorm
from snnzoo.layers import QCFS

D = torch.float64


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial eval statistics and affine parameters in every BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.2)
    return model


def _if_loop(x: torch.Tensor, theta: torch.Tensor, v_init: float) -> torch.Tensor:
    """Spikes [T, ...] of IF neurons with threshold theta, soft reset, V[0] = v_init * theta: a plain loop."""
    v, out = v_init * theta.expand_as(x[0]).clone(), []
    for t in range(x.shape[0]):
        v = v + x[t]
        s = (v >= theta).to(x.dtype)
        v = v - theta * s
        out.append(s)
    return torch.stack(out)


# ---------------------------------------------------------------- QCFS activation

def test_qcfs_forward_matches_formula_and_levels():
    q = QCFS(L=4, init_lambda=2.0).to(D)
    x = torch.linspace(-1, 3, 401, dtype=D)
    expected = torch.tensor([2.0 / 4 * min(max(math.floor(v * 4 / 2.0 + 0.5), 0), 4) for v in x.tolist()], dtype=D)
    assert torch.equal(q(x), expected)
    assert set(torch.unique(q(x) * 4 / 2.0).tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0}


def test_qcfs_straight_through_gradients():
    q = QCFS(L=4, init_lambda=2.0).to(D)
    x = torch.tensor([-0.5, 0.3, 1.1, 1.9, 2.5], dtype=D, requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # identity inside (0, lambda), zero outside
    inside = (x > 0) & (x < 2.0)
    # d y / d lambda: y / lambda - x / lambda inside (straight-through floor), 1 above lambda, 0 below 0
    expected = ((y - x) / 2.0 * inside + (x >= 2.0)).sum()
    assert torch.allclose(q.lam.grad, expected.detach())


def test_qcfs_rejects_bad_arguments():
    with pytest.raises(ValueError, match='L >= 1'):
        QCFS(L=0)
    with pytest.raises(ValueError, match='positive'):
        QCFS(L=4, init_lambda=0.0)


# ---------------------------------------------------------------- neurons

@pytest.mark.parametrize('v_init', [0.0, 0.5])
def test_threshold_if_equals_loop_and_spikingjelly(v_init):
    from spikingjelly.activation_based import neuron as sj_neuron
    T, g = 16, torch.Generator().manual_seed(1)
    theta = torch.rand(3, generator=g, dtype=D) + 0.5
    x = torch.randn(T * 2, 3, 4, 4, generator=g, dtype=D)
    s = ThresholdIF(theta, T, v_init, backend='torch')(x).unflatten(0, (T, 2))
    assert torch.equal(s, _if_loop(x.unflatten(0, (T, 2)), theta.reshape(3, 1, 1), v_init))
    # SpikingJelly's multi-step IF node (threshold 1, soft reset) on x / theta with v_init added at the first step
    sj = sj_neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode='m')
    xs = (x / theta.reshape(3, 1, 1)).unflatten(0, (T, 2)).clone()
    xs[0] += v_init
    assert torch.equal(s, sj(xs))


def test_threshold_if_rate_of_constant_input_within_half_a_level():
    theta, T = torch.tensor(1.5, dtype=D), 32
    x = torch.linspace(-0.5, 2.0, 101, dtype=D)
    rate = ThresholdIF(theta, T, 0.5, backend='torch')(x.repeat(T, 1).flatten(0, 1)).unflatten(0, (T, -1)).mean(0)
    assert (rate * theta - x.clamp(0, 1.5)).abs().max() <= 1.5 / (2 * T) + 1e-12


def test_burst_if_fires_its_rounded_count_first():
    theta, T = torch.tensor(2.0, dtype=D), 4
    x = torch.tensor([[0.3, -1.0, 5.0], [0.9, 0.2, 5.0], [0.0, 0.1, 5.0], [1.0, 0.3, 5.0]], dtype=D)  # [T, 3]
    s = BurstIF(theta, T, 0.5)(x).unflatten(0, (T, -1))[:, 0]  # [T*B, 3] with B = 1 -> [T, 3]
    counts = [min(max(math.floor(v / 2.0 + 0.5), 0), T) for v in x.sum(0).tolist()]  # [1, 0, 4]
    assert s.sum(0).tolist() == counts
    for j, n in enumerate(counts):
        assert s[:, j].tolist() == [1.0] * n + [0.0] * (T - n)


def test_signed_if_count_follows_the_rounded_integral_of_its_input():
    """Hand count: with |X[t]| <= theta and v_init = 1/2, N[t] = max(0, floor(sum_{u<=t} X[u] / theta + 1/2)) at
    every step t; spikes are in {-1, 0, 1}, and a count never goes negative."""
    T, g = 24, torch.Generator().manual_seed(3)
    theta = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0], dtype=D)  # powers of 2 and inputs on a 1/32 grid: exact sums
    x = torch.randint(-26, 33, (T, 7, 5), generator=g).to(D) / 32 * theta  # |x| <= theta
    x[:4] = theta  # fire early, then the input turns negative: a ThresholdIF keeps the early spikes
    x[4:12] = -0.625 * theta
    s = SignedIF(theta, T, 0.5)(x.flatten(0, 1)).unflatten(0, (T, 7))
    assert set(s.unique().tolist()) == {-1.0, 0.0, 1.0}
    expected = torch.floor(x.cumsum(0) / theta + 0.5).clamp(min=0)
    assert torch.equal(s.cumsum(0), expected)
    plain = ThresholdIF(theta, T, 0.5, backend='torch')(x.flatten(0, 1)).unflatten(0, (T, 7))
    assert (plain.cumsum(0) - expected).abs().sum() > 0  # the unsigned neuron overshoots on the same input


def test_signed_conversion_is_closer_to_the_ann_at_small_T():
    """A QCFS ANN at small T: signed neurons put the output nearer the ANN's than plain IF neurons."""
    torch.manual_seed(0)
    ann = _randomise_bn(snnzoo.create_model('qcfs_resnet_cifar', widths=(4, 8), layers=(1, 1), stem_width=4, L=4,
                                            num_classes=5)).to(D).eval()
    x = torch.randn(8, 3, 16, 16, dtype=D)
    a = ann(x)
    err = {signed: (convert(ann, None, T=4, method='qcfs', signed=signed)(x) - a).abs().mean()
           for signed in (False, True)}
    assert err[True] < err[False]
    with pytest.raises(ValueError, match="does not apply to method 'exact'"):
        convert(ann, None, T=4, method='exact', signed=True)


def test_neurons_reject_bad_thresholds():
    with pytest.raises(ValueError, match='positive and finite'):
        ThresholdIF(torch.tensor([1.0, 0.0]), 4)


# ---------------------------------------------------------------- conversion: single layers and blocks

def _conv_relu(cin=3, cout=6, bias=True) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout),
                                       nn.ReLU())).to(D).eval()


@pytest.mark.parametrize('channelwise', [False, True])
def test_single_layer_rate_reproduces_ann_activation(channelwise):
    ann, T = _conv_relu(), 16
    x = torch.randn(4, 3, 8, 8, dtype=D)
    snn = convert(ann, x, T=T, method='max', channelwise=channelwise)
    a = ann(x)
    theta = a.transpose(0, 1).flatten(1).amax(1).reshape(1, -1, 1, 1) if channelwise else a.max()
    # the output is theta x spikes per step: its mean is theta x rate, within half a level theta / (2T) of a
    err = (snn(x) - a).abs()
    assert err.max() <= (theta / (2 * T)).expand_as(a).max() + 1e-12
    assert (err <= theta / (2 * T) + 1e-12).all()


def test_batchnorm_folding_equals_unfolded_ann():
    torch.manual_seed(0)
    ann = _randomise_bn(nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(5 * 6 * 6, 7), nn.BatchNorm1d(7))).to(D).eval()
    root = copy.deepcopy(ann)  # folding rewrites the weights in place
    gm = fx.GraphModule(root, _Tracer().trace(root))
    _fold_batchnorm(gm)
    gm.recompile()
    mods = dict(gm.named_modules())
    assert not any(n.op == 'call_module' and isinstance(mods[n.target], nn.modules.batchnorm._BatchNorm)
                   for n in gm.graph.nodes)
    x = torch.randn(6, 3, 8, 8, dtype=D)
    assert torch.allclose(gm(x), ann(x), rtol=0, atol=1e-12)


def _qcfs_resnet(layers=(2, 1), widths=(6, 8), L=4, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    model = snnzoo.create_model('qcfs_resnet_cifar', widths=widths, layers=layers, stem_width=4, L=L, num_classes=5)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, QCFS):
            m.lam.data.fill_(float(torch.rand((), generator=g)) + 0.7)
    return _randomise_bn(model, seed).to(D).eval()


def test_exact_mode_spike_counts_equal_qcfs_levels_at_T_equal_L():
    L = 4
    ann = _qcfs_resnet(L=L)  # stage 0 has an identity-shortcut block: a residual addition of spikes
    x = torch.randn(6, 3, 16, 16, dtype=D)
    levels = []
    hooks = [m.register_forward_hook(lambda m, i, o: levels.append(o * m.L / m.lam))
             for m in ann.modules() if isinstance(m, QCFS)]
    y = ann(x)
    for h in hooks:
        h.remove()
    snn = convert(ann, None, T=L, method='exact')
    counts = []
    hooks = [m.register_forward_hook(lambda m, i, o: counts.append(o.unflatten(0, (L, -1)).sum(0)))
             for m in snn.neurons()]
    out = snn(x)
    assert len(counts) == len(levels) == 7
    for n, level in zip(counts, levels):
        assert torch.equal(n, torch.round(level.detach()))  # integer levels, equal for every neuron
        assert 0 < n.mean() < L  # neither silent nor saturated: the comparison means something
    assert torch.allclose(out, y, rtol=0, atol=1e-10)


def test_qcfs_method_uses_lambda_and_half_threshold_start():
    ann = _qcfs_resnet(layers=(1,), widths=(6,))
    snn = convert(ann, None, T=8, method='qcfs')
    lams = [m.lam.item() for m in ann.modules() if isinstance(m, QCFS)]
    assert [n.theta.item() for n in snn.neurons()] == lams
    assert all(n.v_init == 0.5 and isinstance(n, ThresholdIF) for n in snn.neurons())
    # a single QCFS layer fed by a static input: the IF rate at T = L is the QCFS activation itself
    layer = nn.Sequential(nn.Conv2d(3, 4, 3), QCFS(L=8, init_lambda=1.3)).to(D).eval()
    x = torch.randn(3, 3, 6, 6, dtype=D)
    assert torch.allclose(convert(layer, None, T=8, method='qcfs')(x), layer(x), rtol=0, atol=1e-12)


def test_residual_block_with_identity_shortcut_converges_to_ann():
    """A ReLU ResNet block (identity shortcut of spikes) converted by threshold balancing: the output error shrinks
    with T, and at T = 256 it is small against the output's range."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.conv = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
            self.act = nn.ReLU()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x):
            h = self.stem(x)
            return self.head(self.act(self.conv(h) + h))

    ann = _randomise_bn(Block()).to(D).eval()
    x = torch.randn(8, 3, 8, 8, dtype=D)
    y = ann(x)
    snn = convert(ann, x, T=256, method='max')
    running = snn.forward_running(x)
    err = [(running[t - 1] - y).abs().max().item() for t in (4, 16, 256)]
    assert err[2] < err[1] < err[0]
    assert err[2] < 0.02 * (y.max() - y.min()).item()


def test_running_output_equals_shorter_runs():
    ann = _qcfs_resnet(layers=(1,), widths=(6,))
    x = torch.randn(3, 3, 16, 16, dtype=D)
    snn = convert(ann, None, T=8, method='qcfs')
    running = snn.forward_running(x)
    for t in (1, 3, 8):
        snn.set_T(t)
        assert torch.allclose(snn(x), running[t - 1], rtol=0, atol=1e-12)


def test_stateless_and_energy_profile_counts_spikes():
    from snnzoo.energy import profile
    ann = _qcfs_resnet(layers=(1,), widths=(6,))
    snn = convert(ann, None, T=4, method='qcfs')
    x = torch.randn(2, 3, 16, 16, dtype=D)
    assert torch.equal(snn(x), snn(x))  # nothing carried over between calls
    assert {k.split('.')[-1] for k in snn.state_dict()} == {'weight', 'bias', 'theta'}  # no membrane state
    report = profile(snn, x)
    rows = {r['name']: r for r in report.rows}
    fed_by_spikes = [r for r in report.rows if r['binary_input']]
    assert len(fed_by_spikes) >= 3 and all(r['acs'] > 0 for r in fed_by_spikes)
    stem = next(r for r in report.rows if 'stem' in r['name'])
    assert not stem['binary_input']  # the image: real-valued, so MACs ...
    assert stem['macs'] == 3 * 9 * 4 * 16 * 16  # ... computed once per image (3x3 conv, 3 -> 4 channels), not T times
    assert report.totals['flops'] > 0 and rows


def test_torchvision_and_timm_resnets_convert():
    import timm
    import torchvision
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    # ReLU call sites, counted by hand: torchvision's ResNet-18 reuses one ReLU module per block (1 + 8 x 2 sites);
    # timm's resnet10t has a three-activation deep stem and 4 blocks of 2 (3 + 8)
    for ann, sites in ((torchvision.models.resnet18(num_classes=4), 17),
                       (timm.create_model('resnet10t', num_classes=4), 11)):
        ann.maxpool = nn.AvgPool2d(3, 2, 1)
        ann.eval()
        snn = convert(ann, x, T=4, method='percentile', percentile=99.0, channelwise=True)
        assert snn(x).shape == (2, 4) and bool(torch.isfinite(snn(x)).all())
        assert len(snn.neurons()) == sites


# ---------------------------------------------------------------- errors

def test_errors_name_what_is_wrong():
    ann = _conv_relu()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    with pytest.raises(NotImplementedError, match='average pooling'):
        convert(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.MaxPool2d(2)).eval(), x.float(), T=4)
    with pytest.raises(NotImplementedError, match=r"'1' \(Sigmoid\)"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 3), nn.Sigmoid()).eval(), x.float(), T=4)
    with pytest.raises(ValueError, match='eval mode'):
        convert(_conv_relu().train(), x, T=4)
    with pytest.raises(ValueError, match='T .* >= 1'):
        convert(ann, x, T=0)
    with pytest.raises(ValueError, match='empty'):
        convert(ann, [], T=4)
    with pytest.raises(ValueError, match='needs calibration data'):
        convert(ann, None, T=4)
    bad = x.clone()
    bad[1, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='batch 1 contains NaN'):
        convert(ann, [(x, 0), (bad, 1)], T=4)
    with pytest.raises(ValueError, match="needs an ANN trained with QCFS"):
        convert(ann, x, T=4, method='qcfs')
    with pytest.raises(ValueError, match='unknown conversion method'):
        convert(ann, x, T=4, method='robust')


# ---------------------------------------------------------------- the pipeline: train a QCFS ANN, snnzoo-ann2snn

def test_ann2snn_cli_on_a_trained_run(tmp_path):
    """A QCFS ResNet trained for a few steps by snnzoo's trainer (digits), then ``snnzoo-ann2snn`` on the run folder:
    the exact mode's accuracy at T = L equals the ANN's, threshold balancing reports every T asked for."""
    from hydra import compose, initialize_config_dir

    from snnzoo.train.ann2snn import main
    from snnzoo.train.cli import config_dir
    from snnzoo.train.loop import run_training
    overrides = [f'paths.output_dir={tmp_path}', 'trainer.progress_bar=false', 'trainer.device=cpu',
                 'model=zoo', 'model.name=qcfs_resnet_fmnist', '+model.kwargs.img_size=8', 'trainer.max_steps=5',
                 'trainer.eval_every_n_epochs=0', 'energy.enabled=false', 'optim.lr=0.01']
    with initialize_config_dir(config_dir=str(config_dir()), version_base='1.3'):
        cfg = compose(config_name='train', overrides=overrides)
    run_training(cfg)
    out = tmp_path / 'result.json'
    assert main([str(tmp_path), '--methods', 'exact', 'qcfs', 'max', '--T', '1', '4', '16', '--calib-images', '64',
                 '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['methods']['exact']['acc'] == {'4': result['ann_acc']}  # qcfs_resnet_fmnist: L = 4
    assert set(result['methods']['qcfs']['acc']) == set(result['methods']['max']['acc']) == {'1', '4', '16'}
    assert main([str(tmp_path), '--methods', 'exact', 'qcfs', '--T', '4', '--signed', '--json', str(out)]) == 0
    signed = json.loads(out.read_text())  # signed neurons for qcfs; exact keeps its own neurons (equal to the ANN)
    assert signed['methods']['exact']['acc'] == {'4': result['ann_acc']}
    assert set(signed['methods']['qcfs']['acc']) == {'4'}
    with pytest.raises(SystemExit, match='does not exist'):
        main([str(tmp_path / 'missing')])


def test_channelwise_thresholds_fold_through_flatten_into_linear():
    """conv -> ReLU -> flatten -> linear with one threshold per channel: the linear layer's weights carry each input
    feature's channel threshold, so out = W (theta * rate) + b, and |out - ann| <= sum_j |W_ij| theta_j / (2T)."""
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).to(D).eval()
    x, T = torch.randn(4, 2, 6, 6, dtype=D), 8
    snn = convert(ann, x, T=T, method='max', channelwise=True)
    theta = ann[1](ann[0](x)).amax((0, 2, 3))  # per channel, by hand
    assert torch.equal(snn.neurons()[0].theta, theta)
    bound = (ann[3].weight.abs() * theta.repeat_interleave(16)).sum(1) / (2 * T)
    assert ((snn(x) - ann(x)).abs() <= bound + 1e-12).all()
    assert not any(isinstance(m, SpikeScale) for m in snn.modules())  # folded, spikes reach the linear layer


def test_layer_called_twice_keeps_an_explicit_scale():
    """One Linear applied at two places (after two neurons of different thresholds): folding a threshold into its
    shared weights would be wrong for the other call, so both keep an explicit scale and the result stays right."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.a(x))) + self.fc(torch.relu(self.b(x)))

    torch.manual_seed(0)
    ann = Shared().to(D).eval()
    x, T = torch.randn(16, 4, dtype=D), 64
    snn = convert(ann, x, T=T, method='max')
    thetas = [n.theta for n in snn.neurons()]
    bound = sum(ann.fc.weight.abs().sum(1) * t / (2 * T) for t in thetas)
    assert ((snn(x) - ann(x)).abs() <= bound + 1e-12).all()
    assert sum(isinstance(m, SpikeScale) for m in snn.modules()) == 2
