"""Spike-driven Transformer v1 against the original implementation's fixtures and specs, SpikingJelly 2.0's SDSA layer,
and the model contract (timm registration, keyword overrides, input layouts, errors, checkpoints)."""
import argparse

import pytest
import timm
import torch

import snnzoo
from snnzoo.layers.sdsa import SpikeDrivenSelfAttention
from snnzoo.models.sdt import SDTMlp, SpikeDrivenTransformer

from reference_check import (check_checkpoint_file, check_input_errors, check_spec, check_static_and_event_inputs,
                             fixture_model, fixture_tests)

NAMES = ('sdt_8_384', 'sdt_6_512', 'sdt_8_512', 'sdt_10_512', 'sdt_8_768', 'sdt_2_512_cifar', 'sdt_2_256_cifar10dvs',
         'sdt_2_256_gesture')
FIXTURES = ('sdt_v1/sdt_8_384_small', 'sdt_v1/sdt_2_512_cifar_small', 'sdt_v1/sdt_2_512_cifar_plif_small',
            'sdt_v1/sdt_2_256_cifar10dvs_small', 'sdt_v1/sdt_2_256_gesture_small')
SPECS = ('sdt_v1/imagenet_8-384', 'sdt_v1/imagenet_6-512', 'sdt_v1/imagenet_8-512', 'sdt_v1/imagenet_10-512',
         'sdt_v1/imagenet_8-768', 'sdt_v1/cifar10_2-512', 'sdt_v1/cifar100_2-512', 'sdt_v1/cifar10_2-256',
         'sdt_v1/cifar10dvs_2-256_T10', 'sdt_v1/gesture_2-256_T16')


def small(name='sdt_2_512_cifar', **kwargs) -> SpikeDrivenTransformer:
    return snnzoo.create_model(name, **dict(dict(embed_dim=32, depth=1, num_heads=2, T=2, backend='torch'), **kwargs))


# ------------------------------------------------------------------------------------------ original's behaviour

test_fixture_reproduced = fixture_tests(FIXTURES)


def test_dvs_fixture_depends_on_dvs_mode(load_fixture):
    """The CIFAR10-DVS fixture needs the original's max-pools inside SDSA (dvs_mode), on by default for that model."""
    fx = load_fixture('sdt_v1/sdt_2_256_cifar10dvs_small')
    assert fixture_model(fx).blocks[0].attn.dvs_mode
    with torch.no_grad():
        out = fixture_model(fx, dvs_mode=False).eval()(fx['input'])
    assert (out - fx['eval_output']).abs().max() > 1e-3


@pytest.mark.parametrize('spec', SPECS)
def test_spec_parameter_count_and_keys(load_spec, spec):
    """Paper configurations: parameters = the original's minus exactly the never-used talking_heads, and the original
    state_dict's keys and shapes map onto ours."""
    s = load_spec(spec)
    assert all(k.endswith('.attn.talking_heads.weight') for k in s['params_without_grad'])
    check_spec(s)


def test_sdsa_matches_spikingjelly():
    """SDSA (+ residual) equals SpikingJelly 2.0's SpikeDrivenSelfAttention in float64, outputs and gradients."""
    sj_attention = pytest.importorskip('spikingjelly.activation_based.layer.attention')
    sj_functional = pytest.importorskip('spikingjelly.activation_based.functional')
    torch.manual_seed(0)
    ours = SpikeDrivenSelfAttention(32, num_heads=4).double()
    ref = sj_attention.SpikeDrivenSelfAttention(32, 4, tau=2.0, detach_reset=True).double()
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.normal_(0.5, 0.3)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, 2.0 / m.in_channels ** 0.5)
    ref.load_state_dict(ours.state_dict())
    x = (torch.randn(3, 2, 32, 5, 5, dtype=torch.float64) * 2).requires_grad_(True)
    for mode in ('train', 'eval'):
        ours.train(mode == 'train'), ref.train(mode == 'train')
        sj_functional.reset_net(ref)                                 # SpikingJelly's neurons keep state
        y_ours = x + ours(x)
        y_ref = ref(x)
        assert torch.allclose(y_ours, y_ref, rtol=0, atol=1e-12)
        probe = torch.randn_like(y_ref)
        g_ours = torch.autograd.grad((y_ours * probe).sum(), [x, *ours.parameters()])
        g_ref = torch.autograd.grad((y_ref * probe).sum(), [x, *ref.parameters()])
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(g_ours, g_ref))


@pytest.mark.parametrize('hidden', [8, 16])
def test_mlp_matches_spikingjelly(hidden):
    """The MLP (+ residual), with the original's inner shortcut when hidden == dim, equals SpikingJelly 2.0's."""
    sj_sdt = pytest.importorskip('spikingjelly.activation_based.model.spike_driven_transformer')
    torch.manual_seed(0)
    ours = SDTMlp(8, hidden).double()
    ref = sj_sdt._MLP(8, hidden, None, dict(tau=2.0, detach_reset=True)).double()
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, 2.0 / m.in_channels ** 0.5)
                m.bias.normal_(0.3, 0.2)
    ref.load_state_dict({k.replace('_conv', '').replace('fc1_bn', 'bn1').replace('fc2_bn', 'bn2'): v
                         for k, v in ours.state_dict().items()})
    x = (torch.randn(3, 2, 8, 4, 4, dtype=torch.float64) * 2).requires_grad_(True)
    y_ours, y_ref = x + ours(x), ref(x)
    assert torch.allclose(y_ours, y_ref, rtol=0, atol=1e-12)
    g_ours = torch.autograd.grad(y_ours.sum(), [x, *ours.parameters()])
    g_ref = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(g_ours, g_ref))


def test_sdsa_is_masks_and_additions():
    """Q, K, V and the KV mask are binary; Y = Q * KV is binary too (no multiplication of real values, no scale)."""
    attn = SpikeDrivenSelfAttention(16, num_heads=2).eval()
    seen = {}
    for name in ('q_lif', 'k_lif', 'v_lif', 'kv_lif'):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o}))
    attn.proj_conv.register_forward_hook(lambda m, i, o: seen.update(y=i[0]))
    with torch.no_grad():
        attn(torch.randn(2, 3, 16, 4, 4) * 3)
    for name, value in seen.items():
        assert set(value.unique().tolist()) <= {0.0, 1.0}, name
    assert seen['kv_lif'].shape == (2, 3, 16, 1, 1)
    assert attn.kv_lif.v_threshold == 0.5


# ------------------------------------------------------------------------------------------------- the contract

@pytest.mark.parametrize('name', NAMES)
def test_registered_with_timm(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert isinstance(model, SpikeDrivenTransformer)
    assert name in snnzoo.list_models('sdt*')
    assert model.pretrained_cfg['input_size'][0] == model.in_chans


def test_paper_configurations():
    with torch.device('meta'):
        dvs = snnzoo.create_model('sdt_2_256_cifar10dvs')
        gesture = snnzoo.create_model('sdt_2_256_gesture')
        imagenet = snnzoo.create_model('sdt_8_768')
    assert (dvs.T, dvs.in_chans, dvs.num_classes, dvs.patch_embed.pooling) == (10, 2, 10, (False, False, True, True))
    assert dvs.blocks[0].attn.dvs_mode and not gesture.blocks[0].attn.dvs_mode
    assert (gesture.T, gesture.num_classes, gesture.patch_embed.pooling) == (16, 11, (False, True, True, True))
    assert (imagenet.T, len(imagenet.blocks), imagenet.num_features) == (4, 8, 768)
    assert imagenet.patch_embed.pooling == (True,) * 4


def test_keyword_overrides():
    model = snnzoo.create_model('sdt_8_384', embed_dim=64, depth=3, num_heads=4, mlp_ratio=2, T=3, img_size=32,
                                in_chans=2, num_classes=7, spike_mode='plif', backend='torch')
    assert len(model.blocks) == 3 and model.T == 3 and model.num_features == 64
    assert model.blocks[0].attn.num_heads == 4 and model.blocks[0].mlp.fc1_conv.out_channels == 128
    assert model.patch_embed.proj_conv.in_channels == 2 and model.head.out_features == 7
    assert isinstance(model.head_lif, snnzoo.layers.ParametricLIFNode)
    out = model(torch.randn(2, 2, 32, 32))
    assert out.shape == (2, 7)


def test_static_and_event_inputs():
    """A static image equals the same frame given T times as events; events bring their own T."""
    torch.manual_seed(0)
    model = small().double().eval()
    with torch.no_grad():
        check_static_and_event_inputs(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), (2, 2, 10))
        longer = model(torch.rand(2, 5, 3, 32, 32, dtype=torch.float64), return_per_step=True)
    assert longer.shape == (5, 2, 10)


def test_pure_function_of_input():
    """No state leaks between calls: the same batch twice gives the same output; each sample ignores the others."""
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[1:2])
    assert torch.equal(first, second)
    assert torch.allclose(alone[0], first[1], atol=1e-6)


def test_timm_protocol():
    model = small(num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x, return_per_step=True)
    assert feats.shape == (2, 2, 32, 8, 8)                         # [T, B, D, H/4, W/4] with pooling '0011'
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    assert torch.equal(model.forward_head(feats), model(x))        # the per-step pair is exact
    rate = model.forward_features(x)                               # timm's [B, D, H/4, W/4]: the mean over T
    assert torch.equal(rate, feats.mean(0))
    assert torch.equal(model.forward_head(rate), model.forward_head(rate.expand(2, *rate.shape)))  # constant input
    assert model.get_classifier() is model.head
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    pooled = model(x)
    assert pooled.shape == (2, 32) and ((pooled >= 0) & (pooled <= 1)).all()  # firing rates of the head neuron
    assert small(num_classes=0)(x).shape == (2, 32)


def test_drop_path_and_drop_rate():
    """Stochastic depth rises linearly over the blocks and, like the head dropout, acts only in train mode."""
    torch.manual_seed(0)
    plain = small(depth=3).eval()
    model = small(depth=3, drop_path_rate=0.3, drop_rate=0.2).eval()
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    assert [b.drop_path.drop_prob for b in model.blocks[1:]] == pytest.approx([0.15, 0.3])
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize('kwargs, message', [
    (dict(pooling_stat='111'), 'pooling_stat'),
    (dict(spike_mode='alif'), 'spike_mode'),
    (dict(embed_dim=36), 'divisible'),
    (dict(T=0), 'T must be'),
    (dict(backend='tensorflow'), 'backend'),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


def test_input_errors():
    check_input_errors(small(), [((2, 2, 32, 32), 'in_chans=3'), ((3, 32, 32), 'rank 3'),
                                 ((2, 3, 4, 32, 32), 'layout is \\[B, T, C, H, W\\]')])
    with pytest.raises(ValueError, match='unknown snnzoo model'):
        snnzoo.create_model('sdt_8_38')


def test_original_checkpoint_file(load_fixture, tmp_path):
    """A checkpoint as the original's timm train.py saves it (args, optimizer, DDP prefix) loads and reproduces."""
    fx = load_fixture('sdt_v1/sdt_2_512_cifar_small')
    path = tmp_path / 'model_best.pth.tar'
    torch.save({'epoch': 299, 'arch': 'sdt', 'args': argparse.Namespace(model='sdt', time_steps=2),
                'state_dict': {'module.' + k: v for k, v in fx['state_dict'].items()},
                'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5}]}, 'metric': 95.6}, path)
    model = check_checkpoint_file(fx, path)
    assert not any('talking_heads.' in k for k in model.state_dict())


def test_checkpoint_for_another_configuration_fails(load_fixture):
    fx = load_fixture('sdt_v1/sdt_2_512_cifar_small')
    with pytest.raises(RuntimeError, match='missing keys'):
        snnzoo.load_checkpoint(small(depth=2), fx['state_dict'])
    with pytest.raises(RuntimeError, match='shape mismatch'):
        snnzoo.load_checkpoint(small(embed_dim=64), fx['state_dict'])


def test_own_state_dict_round_trip():
    torch.manual_seed(0)
    model, copy = small(spike_mode='plif').eval(), small(spike_mode='plif').eval()
    with torch.no_grad():
        model.head_lif.w.fill_(0.7)
    snnzoo.load_checkpoint(copy, model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), copy(x))
