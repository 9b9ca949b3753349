"""SEW-ResNet: the original's fixtures and parameter counts, SpikingJelly 2.0 as a second reference for the AND / IAND
connections, the timm protocol, input layouts, errors and original-checkpoint loading."""
import argparse
import re

import pytest
import timm
import torch
import torchvision
from reference_check import (check_checkpoint_file, check_spec, check_static_and_event_inputs, fixture_model,
                             fixture_tests)

import snnzoo
from snnzoo.layers.residual import sew_connect
from snnzoo.models.sew_resnet import SEWResNet, SEWResNetDVS

FIXTURES = ['sew_resnet/sew_resnet18_add_l1111_T2_64', 'sew_resnet/sew_resnet_gesture_add_T4',
            'sew_resnet/sew_resnet_cifar10dvs_add_T4']
SPECS = ['sew_resnet/imagenet_sew_resnet18', 'sew_resnet/imagenet_sew_resnet34', 'sew_resnet/imagenet_sew_resnet50',
         'sew_resnet/imagenet_sew_resnet101', 'sew_resnet/imagenet_sew_resnet152', 'sew_resnet/dvsgesture_sew_resnet',
         'sew_resnet/cifar10dvs_sew_resnet']
PAPER_MILLIONS = {'sew_resnet/imagenet_sew_resnet34': 21.79, 'sew_resnet/imagenet_sew_resnet50': 25.56,
                  'sew_resnet/imagenet_sew_resnet101': 44.55, 'sew_resnet/imagenet_sew_resnet152': 60.19}


def small(name='sew_resnet18', **kwargs):
    args = dict(layers=[1, 1, 1, 1], T=2, num_classes=5, backend='torch')
    if 'gesture' in name or 'cifar10dvs' in name:
        args = dict(T=2, num_classes=5, backend='torch')
    return snnzoo.create_model(name, **dict(args, **kwargs))


test_fixture_reproduced = fixture_tests(FIXTURES)


@pytest.mark.parametrize('config', SPECS)
def test_spec_parameter_count_and_keys(load_spec, config):
    count = check_spec(load_spec(config))
    if config in PAPER_MILLIONS:
        assert abs(count / 1e6 - PAPER_MILLIONS[config]) < 0.01  # the paper rounds some down, some to nearest


def test_resnext_and_wide_options_match_torchvision():
    with torch.device('meta'):
        for kwargs, tv in ((dict(groups=32, width_per_group=4), torchvision.models.resnext50_32x4d),
                           (dict(width_per_group=128), torchvision.models.wide_resnet50_2)):
            ours = sum(p.numel() for p in snnzoo.create_model('sew_resnet50', **kwargs).parameters())
            assert ours == sum(p.numel() for p in tv().parameters())


def _to_spikingjelly_keys(sd: dict) -> dict:
    """snnzoo SEW-ResNet keys -> SpikingJelly 2.0 zoo keys (``layer1.0.conv1.0.weight`` -> ``layer1.0.conv1.weight``,
    ``conv1.1.*`` -> ``bn1.*``, ``downsample.0.{0,1}`` -> ``downsample.{0,1}``)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r'\.downsample\.0\.(\d)\.', r'.downsample.\1.', k)
        k = re.sub(r'(layer\d\.\d+)\.conv(\d)\.0\.', r'\1.conv\2.', k)
        k = re.sub(r'(layer\d\.\d+)\.conv(\d)\.1\.', r'\1.bn\2.', k)
        out[k] = v
    return out


@pytest.mark.parametrize('block,connect_f', [('basic', 'AND'), ('basic', 'IAND'), ('bottleneck', 'AND')])
def test_matches_spikingjelly_zoo(block, connect_f):
    """SpikingJelly 2.0's sew_resnet with the same weights (its bottleneck swaps IAND's operands, so only AND there)."""
    from spikingjelly.activation_based import functional, neuron, surrogate
    from spikingjelly.activation_based.model import sew_resnet as sj

    torch.manual_seed(0)
    name = 'sew_resnet18' if block == 'basic' else 'sew_resnet50'
    ours = small(name, layers=[1, 2, 1, 1], connect_f=connect_f, num_classes=7).double()
    for m in ours.modules():  # random BN statistics so that the comparison is not trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 1.5), m.bias.data.normal_(0, 0.3)
    ref = sj.SEWResNet(sj.BasicBlock if block == 'basic' else sj.Bottleneck, [1, 2, 1, 1], num_classes=7,
                       cnf=connect_f, spiking_neuron=neuron.IFNode, surrogate_function=surrogate.ATan(),
                       detach_reset=True)
    functional.set_step_mode(ref, 'm')
    ref.double().load_state_dict(_to_spikingjelly_keys(ours.state_dict()))
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 3
    for train in (False, True):
        ours.train(train), ref.train(train)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        out = ours(xa)
        functional.reset_net(ref)
        expected = ref(xb.unsqueeze(0).repeat(2, 1, 1, 1, 1)).mean(0)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
        out.square().sum().backward(), expected.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-10)


def test_connect_functions_by_hand():
    s = torch.tensor([0., 1., 0., 1.])
    a = torch.tensor([0., 0., 2., 1.])
    assert sew_connect(s, a, 'ADD').tolist() == [0., 1., 2., 2.]
    assert sew_connect(s, a, 'AND').tolist() == [0., 0., 0., 1.]
    assert sew_connect(s, a, 'IAND').tolist() == [0., 0., 2., 0.]


def test_timm_create_model_and_defaults():
    with torch.device('meta'):
        m = timm.create_model('sew_resnet34')
        g = timm.create_model('sew_resnet_gesture')
        c = timm.create_model('sew_resnet_cifar10dvs')
    assert isinstance(m, SEWResNet) and m.T == 4 and m.connect_f == 'ADD' and m.num_classes == 1000
    assert m.pretrained_cfg['input_size'] == (3, 224, 224) and m.pretrained_cfg['classifier'] == 'fc'
    assert isinstance(g, SEWResNetDVS) and g.T == 16 and g.num_classes == 11 and g.in_chans == 2
    assert c.num_classes == 10 and c.num_features == 128
    assert {'sew_resnet18', 'sew_resnet152', 'sew_resnet_gesture', 'sew_resnet_cifar10dvs'} <= set(
        snnzoo.list_models('sew_resnet*'))


def test_keyword_overrides():
    m = small(connect_f='iand', T=3, num_classes=4, in_chans=1, img_size=40, zero_init_residual=True)
    assert m.connect_f == 'IAND' and m.T == 3 and m.in_chans == 1 and m.fc.out_features == 4
    assert [len(m.layer1), len(m.layer2)] == [1, 1]
    assert m(torch.rand(2, 1, 40, 40)).shape == (2, 4)
    a = small(connect_f='AND', zero_init_residual=True)
    bn = a.layer3[0].conv2[1]
    assert bn.weight.abs().sum() == 0 and torch.all(bn.bias == 1)
    d = small('sew_resnet_gesture', connect_f='AND', layers=[2, 1, 1, 1, 1, 1, 1], in_chans=3, img_size=(128, 256),
              T=1)
    assert len(d.stages[0].blocks) == 2 and d.num_features == 32 and d.head_hidden_size == 32 * 1 * 2
    assert d(torch.rand(1, 1, 3, 128, 256)).shape == (1, 5)


@pytest.mark.parametrize('kind', ['imagenet', 'dvs'])
def test_static_and_event_inputs_and_per_step_output(kind):
    torch.manual_seed(0)
    if kind == 'imagenet':
        m, size = small().double(), (2, 3, 32, 32)
    else:  # the DVS design at a small size (the registered networks need 128x128)
        m = SEWResNetDVS(channels=(4, 8, 8), img_size=32, T=2, num_classes=5, backend='torch').double()
        size = (2, 2, 32, 32)
    x = torch.rand(size, dtype=torch.float64) * 2
    for train in (False, True):
        check_static_and_event_inputs(m.train(train), x, (2, 2, 5), atol=1e-12)
    assert m(torch.rand((2, 3) + size[1:], dtype=torch.float64)).shape == (2, 5)  # event input with its own T


def test_timm_protocol():
    m = small()
    x = torch.rand(2, 3, 64, 64)
    feats = m.forward_features(x, return_per_step=True)
    assert feats.shape == (2, 2, 512, 2, 2)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 512)
    assert torch.equal(m.forward_features(x), feats.mean(0))
    m.reset_classifier(0)
    assert m.get_classifier().__class__ is torch.nn.Identity and m(x).shape == (2, 512)
    f = timm.create_model('sew_resnet50', features_only=True, layers=[1, 1, 1, 1], T=2, out_indices=(1, 3, 4))
    outs = f(x)
    assert [o.shape[1] for o in outs] == f.feature_info.channels() == [256, 1024, 2048]
    assert [64 // o.shape[-1] for o in outs] == f.feature_info.reduction() == [4, 16, 32]
    g = timm.create_model('sew_resnet_gesture', features_only=True, T=1)
    assert [o.shape[1:] for o in g(torch.rand(1, 1, 2, 128, 128))] == [   # stage 0 before its pool, then stages
        (32, 128 // 2 ** i, 128 // 2 ** i) for i in range(8)]
    _, inter = small().forward_intermediates(x, indices=2, return_per_step=True)
    assert [t.shape for t in inter] == [(2, 2, 256, 4, 4), (2, 2, 512, 2, 2)]


def test_stage_layouts_on_the_cpu():
    """Stem and stages 1-2 on channels-last frames, stages 3-4 on NCHW, in forward and in timm's feature API alike;
    the same values as with every frame NCHW."""
    m = small().eval()
    seen = []

    def layout(module, args):
        frame = args[0][0]  # [B, C, H, W] of step 0
        seen.append((frame.is_contiguous(memory_format=torch.channels_last), args[0].is_contiguous()))

    m.layer1.register_forward_pre_hook(layout)
    m.layer3.register_forward_pre_hook(layout)
    x = torch.rand(2, 3, 64, 64)
    out = m.forward_features(x, return_per_step=True)
    _, inter = m.forward_intermediates(x, indices=1, return_per_step=True)
    assert seen == [(True, False), (False, True)] * 2   # layer1: channels-last frames; layer3: NCHW
    assert torch.equal(inter[-1], out)


def test_clear_errors():
    with pytest.raises(ValueError, match="connect_f 'OR'.*ADD"):
        small(connect_f='OR')
    with pytest.raises(ValueError, match='groups=1 and width_per_group=64'):
        small(groups=2)
    with pytest.raises(ValueError, match='4 block counts'):
        small(layers=[1, 1, 1])
    with pytest.raises(ValueError, match='too small'):
        small('sew_resnet_gesture', img_size=64)
    m = small()
    with pytest.raises(ValueError, match='in_chans=3 but the input has 2 channels'):
        m(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match='rank 3'):
        m(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r'built for \(128, 128\)'):
        small('sew_resnet_gesture')(torch.rand(1, 2, 2, 64, 64))
    with pytest.raises(RuntimeError, match=r'missing keys \(12\): layer3\.1\.conv1\.0\.weight'):
        snnzoo.load_checkpoint(small(layers=[1, 1, 2, 1]), small().state_dict())
    with pytest.raises(RuntimeError, match='shape mismatch'):
        snnzoo.load_checkpoint(small(), small('sew_resnet50').state_dict())


def test_loads_original_training_checkpoint_file(load_fixture, tmp_path):
    """The SEW repository's train.py checkpoint: {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args', ...}."""
    fx = load_fixture('sew_resnet/sew_resnet18_add_l1111_T2_64')
    sd = fx['state_dict']
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    path = tmp_path / 'checkpoint_max.pth'
    torch.save({'model': sd, 'optimizer': opt.state_dict(), 'epoch': 319, 'max_test_acc1': 67.0,
                'args': argparse.Namespace(model='sew_resnet18', connect_f='ADD', T=4)}, path)
    check_checkpoint_file(fx, path)
    # newer SpikingJelly (>= 0.0.0.0.12) writes SeqToANNContainer without '.module'; DDP adds 'module.'
    fixture_model(fx, weights={'module.' + k.replace('.module.', '.'): v for k, v in sd.items()})
