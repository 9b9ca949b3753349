"""Meta-SpikeFormer (SDT v2) against the original implementation's fixtures and specs, hand-derived identities of its
blocks, and the model contract (timm registration, overrides, kd head, input layouts, errors, v2 checkpoints)."""
import argparse

import pytest
import timm
import torch
import torch.nn.functional as F

import snnzoo
from snnzoo.layers.metaformer_blocks import BNAndPad2d, RepConv, SpikeDrivenSelfAttentionV2
from snnzoo.models.meta_spikeformer import MetaSpikeFormer

from reference_check import (check_checkpoint_file, check_input_errors, check_spec, check_static_and_event_inputs,
                             fixture_model, fixture_tests)

NAMES = ('meta_spikeformer_8_384', 'meta_spikeformer_8_512', 'meta_spikeformer_8_768')
FIXTURES = ('meta_spikeformer/meta_spikeformer_8_384_small', 'meta_spikeformer/meta_spikeformer_8_384_kd_small')
SPECS = ('meta_spikeformer/imagenet_8_384', 'meta_spikeformer/imagenet_8_384_kd', 'meta_spikeformer/imagenet_8_512',
         'meta_spikeformer/imagenet_8_512_kd', 'meta_spikeformer/imagenet_8_768', 'meta_spikeformer/imagenet_8_768_kd')


def small(**kwargs) -> MetaSpikeFormer:
    args = dict(embed_dim=(8, 16, 32, 48), depth=(1, 1, 1, 1), num_heads=2, T=2, num_classes=10, backend='torch')
    return snnzoo.create_model('meta_spikeformer_8_384', **dict(args, **kwargs))


# ------------------------------------------------------------------------------------------ original's behaviour

test_fixture_reproduced = fixture_tests(FIXTURES)


@pytest.mark.parametrize('spec', SPECS)
def test_spec_parameter_count_and_keys(load_spec, spec):
    s = load_spec(spec)
    assert s['params_without_grad'] == []
    check_spec(s)


def _randomise_bn(module, gen):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.5, generator=gen)
                m.running_mean.normal_(0.0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)


def test_repconv_equals_zero_padded_convolutions():
    """Eval mode: padding the BN output with BN(0) equals zero-padding the input before conv1x1 and BN."""
    gen = torch.Generator().manual_seed(0)
    rep = RepConv(6, 10).double().eval()
    _randomise_bn(rep, gen)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=gen)
    conv1, bn_pad, (dw, pw, bn2) = rep.body
    expected = bn2(pw(dw(bn_pad.bn(conv1(F.pad(x, [1, 1, 1, 1]))))))
    with torch.no_grad():
        assert torch.allclose(rep(x), expected, rtol=0, atol=1e-12)


def test_bn_and_pad_border_uses_updated_running_statistics():
    """Train mode: the border is BN's bias - running_mean * weight / sqrt(running_var + eps) after this batch's update,
    and carries no gradient to weight or bias."""
    gen = torch.Generator().manual_seed(1)
    layer = BNAndPad2d(3).double()
    _randomise_bn(layer, gen)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=gen)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
    running_mean = 0.9 * layer.bn.running_mean + 0.1 * mean
    running_var = 0.9 * layer.bn.running_var + 0.1 * var
    out = layer(x)
    border = (layer.bn.bias - running_mean * layer.bn.weight / torch.sqrt(running_var + 1e-5)).detach()
    assert out.shape == (4, 3, 4, 4)
    assert torch.allclose(out[0, :, 0, 0], border) and torch.allclose(out[3, :, -1, 2], border)
    inner = (x - mean.view(1, 3, 1, 1)) / torch.sqrt(x.var((0, 2, 3), unbiased=False) + 1e-5).view(1, 3, 1, 1)
    affine = inner * layer.bn.weight.view(1, 3, 1, 1) + layer.bn.bias.view(1, 3, 1, 1)
    assert torch.allclose(out[:, :, 1:3, 1:3], affine)
    out[:, :, 0, :].sum().backward()                                # the top border row only
    assert layer.bn.weight.grad.abs().max() == 0 and layer.bn.bias.grad.abs().max() == 0


def test_linear_attention_formula():
    """The attention neuron's input is Q (K^T V) * 0.125 on binary Q, K, V, computed here token by token."""
    torch.manual_seed(0)
    attn = SpikeDrivenSelfAttentionV2(8, num_heads=2).double().eval()
    _randomise_bn(attn, torch.Generator().manual_seed(2))
    seen = {}
    for name in ('q_lif', 'k_lif', 'v_lif'):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o}))
    attn.attn_lif.register_forward_hook(lambda m, i, o: seen.update(a=i[0]))
    with torch.no_grad():
        attn(torch.randn(2, 3, 8, 3, 3, dtype=torch.float64) * 3)
    q, k, v = (seen[n].reshape(2, 3, 2, 4, 9) for n in ('q_lif', 'k_lif', 'v_lif'))   # [T, B, h, d, N]
    assert all(set(t.unique().tolist()) <= {0.0, 1.0} for t in (q, k, v)) and k.sum() > 0
    expected = torch.zeros_like(q)
    for n in range(9):                                          # token n: sum over tokens m of (q_n . k_m) v_m
        weights = (q[..., n:n + 1] * k).sum(3, keepdim=True)    # q_n . k_m, [T, B, h, 1, N]
        expected[..., n] = (weights * v).sum(4) * 0.125
    assert torch.allclose(seen['a'].reshape(2, 3, 2, 4, 9), expected, atol=1e-12)
    assert attn.attn_lif.v_threshold == 0.5


# ------------------------------------------------------------------------------------------------- the contract

@pytest.mark.parametrize('name', NAMES)
def test_registered_with_timm(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert isinstance(model, MetaSpikeFormer) and model.T == 4 and model.num_classes == 1000
    assert name in snnzoo.list_models('meta_spikeformer*')
    assert [len(s) for s in (model.conv_block1_1, model.conv_block1_2, model.conv_block2, model.block3,
                             model.block4)] == [1, 1, 2, 6, 2]


def test_keyword_overrides_and_shapes():
    model = small(depth=(2, 1, 3, 1), mlp_ratio=2, in_chans=2, num_classes=5, T=3)
    assert [len(s) for s in (model.conv_block1_2, model.conv_block2, model.block3, model.block4)] == [2, 1, 3, 1]
    assert model.block3[0].mlp.fc1.out_channels == 64 and model.conv_block2[0].conv1.out_channels == 32
    assert model.downsample1_1.encode_conv.in_channels == 2 and model.head.out_features == 5
    x = torch.randn(2, 2, 32, 32)
    assert model.forward_features(x, return_per_step=True).shape == (3, 2, 48, 2, 2)  # stage 4 stays at 1/16
    assert model.forward_features(x).shape == (2, 48, 2, 2)
    assert model(x).shape == (2, 5)


def test_kd_head_outputs():
    torch.manual_seed(0)
    model = small(kd=True).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    train = model.train()(x)
    assert isinstance(train, list) and len(train) == 2 and all(t.shape == (2, 10) for t in train)
    per_step = model(x, return_per_step=True)
    assert all(t.shape == (2, 2, 10) for t in per_step)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x, return_per_step=True)
        spikes = model.head_lif(feats.flatten(3).mean(3))
        expected = (model.head(spikes).mean(0) + model.head_kd(spikes).mean(0)) / 2
        assert torch.allclose(model(x), expected, atol=1e-12)
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.head_kd.out_features == 3
    assert small().head_kd is None


def test_static_and_event_inputs():
    torch.manual_seed(0)
    model = small().double().eval()
    with torch.no_grad():
        check_static_and_event_inputs(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), (2, 2, 10))


def test_timm_protocol():
    model = small()
    x = torch.randn(2, 3, 32, 32)
    assert model.get_classifier() is model.head and model.num_features == 48
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 48)
    model.reset_classifier(0)
    assert model(x).shape == (2, 48)


def test_drop_path():
    model = small(drop_path_rate=0.4)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.0
             for stage in (model.conv_block1_1, model.conv_block1_2, model.conv_block2, model.block3, model.block4)
             for b in stage]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    plain = small().eval()
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain(x))


@pytest.mark.parametrize('kwargs, message', [
    (dict(embed_dim=64), 'list of 4'),
    (dict(embed_dim=(8, 16, 32)), 'list of 4'),
    (dict(depth=8), 'list of 4'),
    (dict(embed_dim=(8, 16, 30, 48), num_heads=4), 'divisible by num_heads'),
    (dict(T=0), 'T must be'),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(**kwargs)


def test_input_errors():
    check_input_errors(small(), [((2, 1, 32, 32), 'in_chans=3'), ((2, 3), 'rank 2')])


def test_v2_checkpoint_file(load_fixture, tmp_path):
    """The v2 repository's checkpoint (model + optimizer + scaler + args) loads and reproduces the fixture."""
    fx = load_fixture('meta_spikeformer/meta_spikeformer_8_384_kd_small')
    path = tmp_path / 'checkpoint-199.pth'
    torch.save({'model': fx['state_dict'], 'optimizer': {'state': {0: {'step': torch.tensor(3.0)}},
                                                        'param_groups': [{'lr': 2e-5, 'params': [0]}]},
                'epoch': 199, 'scaler': {'scale': 65536.0, 'growth_factor': 2.0},
                'args': argparse.Namespace(model='metaspikformer_8_384', time_steps=2, kd=True, finetune='')}, path)
    check_checkpoint_file(fx, path)
    with pytest.raises(RuntimeError, match='unexpected keys.*head_kd'):
        fixture_model(fx, weights=path, kd=False)
