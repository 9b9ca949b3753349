"""timm's feature API on every family: ``features_only=True`` (timm's FeatureGetterNet) and ``forward_intermediates``
feed a feature pyramid network (torchvision's ``FeaturePyramidNetwork``), and every level is what its ``feature_info``
says: the output of the module it names, averaged over the T steps, at the stated width and stride."""
from collections import OrderedDict
from math import ceil

import pytest
import timm
import torch
from torchvision.ops import FeaturePyramidNetwork

import snnzoo

# (name, small keyword overrides of the same design, input [C, H, W])
FAMILIES = [
    ('spikformer_4_384_cifar', dict(embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
    ('spikingformer_cml_4_384_cifar', dict(embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
    ('sdt_2_512_cifar', dict(embed_dim=32, depth=2, num_heads=2), (3, 32, 32)),
    ('meta_spikeformer_8_384', dict(embed_dim=(16, 32, 64, 64), depth=(1, 1, 1, 1), num_heads=2), (3, 32, 32)),
    ('qkformer_4_384_cifar', dict(embed_dim=64, depth=3, num_heads=2), (3, 32, 32)),
    # embed_dim >= 64: with a shortcut conv of <= 4 input channels torch 2.14.1's channels-last strided 1x1 conv
    # backward corrupts the CPU heap (a torch bug; the published widths are far above it)
    ('qkformer_2_256_dvs', dict(embed_dim=64, depth=2, num_heads=2, img_size=32), (2, 32, 32)),
    ('sew_resnet18', dict(layers=(1, 1, 1, 1)), (3, 64, 64)),
    ('ms_resnet18', dict(layers=(1, 1, 1, 1)), (3, 64, 64)),
    ('sew_resnet_nmnist', dict(), (2, 34, 34)),
]
IDS = [name for name, _, _ in FAMILIES]


def _build(name, kwargs, **extra):
    """In train mode: BatchNorm on batch statistics makes the small random nets fire (deterministic: no dropout)."""
    torch.manual_seed(0)
    return timm.create_model(name, T=2, **kwargs, **extra).train()


def _module_outputs(model, names, x):
    """Outputs of the named modules in ``model(x)``, each as ``[T, B, C, H, W]`` averaged over T."""
    T, B = model.T, x.shape[0]
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, out, n=n: seen.__setitem__(n, out.reshape(T, B, *out.shape[-3:]).mean(0))) for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [seen[n] for n in names]


@pytest.mark.parametrize('name, kwargs, shape', FAMILIES, ids=IDS)
def test_feature_levels_are_the_named_modules_averaged_over_time(name, kwargs, shape):
    model = _build(name, kwargs)
    x = torch.rand(2, *shape)
    info = model.feature_info
    assert len(info) >= 3
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        per_step = model.forward_intermediates(x, return_per_step=True, intermediates_only=True)
        features = model.forward_features(x)
        stream = model.forward_features(x, return_per_step=True)
    expected = _module_outputs(model, [level['module'] for level in info], x)
    assert all(level.abs().sum() > 0 for level in levels)
    for level, got, want, steps in zip(info, levels, expected, per_step):
        r = level['reduction']
        assert got.shape[:2] == (2, level['num_chs'])
        assert all(size // r <= got_size <= ceil(size / r) for size, got_size in zip(shape[1:], got.shape[2:]))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)      # the named module's output, mean over T
        assert steps.shape == (model.T, *got.shape) and torch.equal(steps.mean(0), got)
    assert torch.equal(final, features) and torch.equal(features, stream.mean(0))
    with torch.no_grad():
        if hasattr(model, 'head_lif'):  # SDT heads fire a LIF per step: the exact pair is the per-step one
            torch.testing.assert_close(model.forward_head(stream), model(x), rtol=0, atol=0)
        else:                            # a linear head on features averaged over space and T commutes with the mean
            torch.testing.assert_close(model.forward_head(features), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name, kwargs, shape', FAMILIES, ids=IDS)
def test_fpn_on_features_only(name, kwargs, shape):
    """features_only=True builds timm's FeatureGetterNet from the same weights; an FPN reads its levels and trains."""
    full = _build(name, kwargs)
    net = _build(name, kwargs, features_only=True)
    x = torch.rand(2, *shape)
    channels, reductions = net.feature_info.channels(), net.feature_info.reduction()
    assert len(channels) >= 3
    feats = net(x)
    with torch.no_grad():
        taps = full.forward_intermediates(x, indices=net.feature_info.out_indices, intermediates_only=True)
    for f, t in zip(feats, taps):
        torch.testing.assert_close(f.detach(), t, rtol=0, atol=0)
    fpn = FeaturePyramidNetwork(channels, out_channels=16)
    outs = fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
    for out, f in zip(outs.values(), feats):
        assert out.shape == (2, 16, *f.shape[-2:])
    assert sorted(reductions) == reductions
    sum(o.square().mean() for o in outs.values()).backward()
    trained = [n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any('conv' in n or 'proj' in n for n in trained)  # gradients reach the spiking backbone


def test_pretrained_weights_load_before_the_feature_wrapper():
    torch.manual_seed(0)
    plain = snnzoo.create_model('sew_resnet_nmnist', pretrained=True).eval()
    net = snnzoo.create_model('sew_resnet_nmnist', pretrained=True, features_only=True).eval()
    own = dict(net.named_parameters())
    assert own and all(torch.equal(p, own[f'model.{n}']) for n, p in plain.named_parameters() if f'model.{n}' in own)
    x = torch.rand(2, 8, 2, 34, 34)
    with torch.no_grad():
        for f, t in zip(net(x), plain.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(f, t, rtol=0, atol=0)
    one = snnzoo.create_model('sew_resnet_nmnist', pretrained=True, in_chans=1, num_classes=3)  # timm's adaptation
    w = plain.get_parameter('stages.0.proj.0.0.weight')
    assert one.get_parameter('stages.0.proj.0.0.weight').shape[1] == 1 and one.fc.out_features == 3
    torch.testing.assert_close(one.get_parameter('stages.0.proj.0.0.weight'), w.sum(1, keepdim=True))


def test_isotropic_depth_one_has_two_levels():
    """A 1-block Spikformer has two levels (the patch embedding and the block); features_only returns both."""
    net = snnzoo.create_model('spikformer_1_64_digits', features_only=True)
    assert net.feature_info.module_name() == ['patch_embed', 'block.0']
    assert [f.shape for f in net(torch.rand(2, 1, 8, 8))] == [(2, 64, 4, 4)] * 2


@pytest.mark.parametrize('name, kwargs, shape', FAMILIES[:1] + FAMILIES[3:4] + FAMILIES[6:8],
                         ids=[IDS[0], IDS[3], IDS[6], IDS[7]])
def test_device_dtype_construction(name, kwargs, shape):
    m = timm.create_model(name, T=2, **kwargs, device='meta', dtype=torch.float64)
    tensors = list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]
    assert all(t.device.type == 'meta' and t.dtype == torch.float64 for t in tensors)
    m.reset_classifier(7)
    head = m.get_classifier()
    assert head.weight.device.type == 'meta' and head.weight.dtype == torch.float64


def test_set_input_size():
    """Spikformer's fixed input size is a check only (no position embedding): timm's set_input_size moves it."""
    m = snnzoo.create_model('spikformer_4_384_cifar', embed_dim=32, depth=1, num_heads=2, T=1)
    with pytest.raises(ValueError, match=r'\(32, 32\)'):
        m(torch.rand(1, 3, 64, 64))
    m.set_input_size(img_size=64)
    assert m.forward_features(torch.rand(1, 3, 64, 64)).shape == (1, 32, 16, 16)
    with pytest.raises(ValueError, match='patch_size'):
        m.set_input_size(patch_size=8)
