"""MS-ResNet: the original's fixtures and parameter counts, its neuron recomputed from the original's formula, the timm
protocol, input layouts, errors and original-checkpoint loading."""
import pytest
import timm
import torch
from reference_check import check_checkpoint_file, check_static_and_event_inputs, fixture_tests, spec_tests

import snnzoo
from snnzoo.models.ms_resnet import MSResNet, _ms_neuron

FIXTURES = ['ms_resnet/ms_resnet18_l1111_T2_64', 'ms_resnet/ms_resnet104_l1111_T2_64']
SPECS = ['ms_resnet/imagenet_resnet18', 'ms_resnet/imagenet_resnet34', 'ms_resnet/imagenet_resnet104']
test_fixture_reproduced = fixture_tests(FIXTURES)
test_spec_parameter_count_and_keys = spec_tests(SPECS)


def small(name='ms_resnet18', **kwargs):
    return snnzoo.create_model(name, **dict(dict(layers=[1, 1, 1, 1], T=2, num_classes=5, backend='torch'), **kwargs))


class _OriginalSpike(torch.autograd.Function):
    """The original's ActFun: float32 spikes (u > 0.5), gradient 1 where |u - 0.5| < 0.5."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return u.gt(0.5).float()

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * ((u - 0.5).abs() < 0.5).float()


def _original_mem_update(x):
    """The original's mem_update over [T, ...]: u_t = 0.25 u_{t-1} (1 - s_{t-1}.detach()) + x_t."""
    out = torch.zeros_like(x)
    u = spike = None
    for t in range(x.shape[0]):
        u = x[t] if t == 0 else u * 0.25 * (1 - spike.detach()) + x[t]
        spike = _OriginalSpike.apply(u)
        out[t] = spike
    return out


@pytest.mark.parametrize('fp32_spike_grad', [True, False])
def test_neuron_is_the_originals_mem_update(fp32_spike_grad):
    torch.manual_seed(0)
    x = torch.randn(6, 4000, dtype=torch.float64)
    g = torch.randn(6, 4000, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = _ms_neuron('torch', fp32_spike_grad)(xa)
    ref = _original_mem_update(xb)
    assert torch.equal(ours, ref) and 0.1 < ref.mean() < 0.5
    (ours * g).sum().backward(), (ref * g).sum().backward()
    tol = 1e-15 if fp32_spike_grad else 1e-6  # the original rounds the gradient reaching a spike to float32
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=tol)


def test_timm_create_model_and_defaults():
    with torch.device('meta'):
        m = timm.create_model('ms_resnet104')
        d = timm.create_model('ms_resnet104', drop_rate=0.2)
    assert isinstance(m, MSResNet) and m.T == 6 and m.num_classes == 1000 and m.avg_down
    assert len(m.conv1) == 3 and len(m.layer3) == 32 and m.head_drop.p == 0.0 and d.head_drop.p == 0.2
    assert m.pretrained_cfg['input_size'] == (3, 224, 224) and m.pretrained_cfg['first_conv'] == 'conv1.0'
    assert set(snnzoo.list_models('ms_resnet*')) >= {'ms_resnet18', 'ms_resnet34', 'ms_resnet104'}


def test_keyword_overrides():
    m = small(layers=[1, 2, 1, 1], T=3, num_classes=4, in_chans=1, img_size=32)
    assert m.T == 3 and len(m.layer2) == 2 and m.conv1[0].in_channels == 1 and m.fc.out_features == 4
    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 4)
    # BN initialisation of the original: 0.5 (the threshold), 0 for the last BN of each residual branch
    assert torch.all(m.bn1.weight == 0.5) and torch.all(m.layer2[1].conv1[1].weight == 0.5)
    assert torch.all(m.layer2[1].conv2[1].weight == 0) and torch.all(m.layer2[0].shortcut[1].weight == 0.5)


@pytest.mark.parametrize('name', ['ms_resnet18', 'ms_resnet104'])
def test_static_and_event_inputs_and_per_step_output(name):
    torch.manual_seed(0)
    m = small(name).double()
    for mod in m.modules():  # non-zero residual branches
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2
    for train in (False, True):
        check_static_and_event_inputs(m.train(train), x, (2, 2, 5), atol=1e-12)
    assert m(torch.rand(2, 3, 3, 32, 32, dtype=torch.float64)).shape == (2, 5)  # event input with its own T


def test_timm_protocol():
    m = small()
    x = torch.rand(2, 3, 64, 64)
    feats = m.forward_features(x, return_per_step=True)
    assert feats.shape == (2, 2, 512, 2, 2) and set(feats.unique().tolist()) <= {0.0, 1.0}
    final, _ = m.forward_intermediates(x, indices=1)
    assert torch.equal(final, m.forward_features(x)) and torch.equal(final, feats.mean(0))  # firing rates of the final LIF
    assert m.forward_head(feats, pre_logits=True).shape == (2, 512)
    m.reset_classifier(0)
    assert m(x).shape == (2, 512)
    f = timm.create_model('ms_resnet104', features_only=True, layers=[1, 1, 1, 1], T=2)
    outs = f(x)
    assert [o.shape[1] for o in outs] == f.feature_info.channels() == [64, 64, 128, 256, 512]
    assert [64 // o.shape[-1] for o in outs] == f.feature_info.reduction() == [2, 4, 8, 16, 32]


def test_clear_errors():
    with pytest.raises(ValueError, match='4 block counts'):
        small(layers=[1, 1, 0, 1])
    with pytest.raises(ValueError, match="unknown stem 'vit'"):
        small(stem='vit')
    m = small('ms_resnet104')
    with pytest.raises(ValueError, match=r'even feature size.*\(56, 56\) gives 7 at stage 3.*divisible by 32'):
        m(torch.rand(1, 3, 56, 56))
    assert m(torch.rand(1, 3, 63, 63)).shape == (1, 5)  # odd input, but even at every stage: fine as in the original
    with pytest.raises(ValueError, match='in_chans=3 but the input has 1 channels'):
        m(torch.rand(1, 1, 64, 64))
    with pytest.raises(RuntimeError, match='unexpected keys'):
        snnzoo.load_checkpoint(small(), small('ms_resnet104').state_dict())


def test_loads_original_checkpoint_file(load_fixture, tmp_path):
    """The original saves the DDP model's state_dict (keys prefixed 'module.')."""
    fx = load_fixture('ms_resnet/ms_resnet18_l1111_T2_64')
    path = tmp_path / 'resnet18.pth'
    torch.save({'module.' + k: v for k, v in fx['state_dict'].items()}, path)
    check_checkpoint_file(fx, path)
