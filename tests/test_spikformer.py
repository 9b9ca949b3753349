"""Spikformer and CML-Spikformer against the original implementations' fixtures and specs, SpikingJelly 2.0's SSA,
float64 recomputations of the attention, and the model protocol (timm, inputs, errors, original checkpoint files)."""
import argparse

import pytest
import timm
import torch
from reference_check import (check_matches_spikingjelly, copy_to_spikingjelly, fixture_model, fixture_tests,
                             spec_tests)

import snnzoo
from snnzoo.layers.attention import SpikingSelfAttention
from snnzoo.layers import patch_embed
from snnzoo.layers.patch_embed import SpikingPatchSplitting
from snnzoo.layers.temporal import channels_last_frames
from snnzoo.models.spikformer import Spikformer

NAMES = ('spikformer_8_384', 'spikformer_6_512', 'spikformer_8_512', 'spikformer_10_512', 'spikformer_8_768',
         'spikformer_4_384_cifar', 'spikformer_4_256_cifar', 'spikformer_2_384_cifar', 'spikformer_2_256_dvs',
         'spikformer_cml_4_384_cifar')
FIXTURES = ('spikformer/cifar10_e32_d1_h2_T2_img32', 'spikformer/cifar10dvs_e32_d1_h2_T2_img128',
            'spikformer/imagenet_e32_d1_h2_T4_img64', 'spikformer_cml/cifar_e32_d1_t2_img32_nc10')
SPECS = ('spikformer/cifar10_4-384', 'spikformer/cifar100_4-384', 'spikformer/cifar10dvs_2-256',
         'spikformer/imagenet_8-384', 'spikformer/imagenet_6-512', 'spikformer/imagenet_8-512',
         'spikformer/imagenet_10-512', 'spikformer/imagenet_8-768', 'spikformer_cml/cifar10_4-384',
         'spikformer_cml/cifar100_4-384')
test_fixture_reproduced = fixture_tests(FIXTURES)
test_spec_parameter_count_and_keys = spec_tests(SPECS)


def small(name='spikformer_4_384_cifar', **kwargs) -> Spikformer:
    return snnzoo.create_model(name, **dict(dict(embed_dim=32, depth=1, num_heads=2, T=2, backend='torch'), **kwargs))


def test_registered_with_timm():
    assert set(NAMES) <= set(snnzoo.list_models('spikformer*'))
    model = timm.create_model('spikformer_2_256_dvs', embed_dim=32, num_heads=2, backend='torch')
    assert isinstance(model, Spikformer)
    assert model.pretrained_cfg['input_size'] == (2, 128, 128) and model.num_classes == 10
    assert model.block[0].attn.scale == 0.25 and model.T == 16
    assert model.num_features == 32 and model.get_classifier() is model.head


def test_keyword_overrides():
    m = snnzoo.create_model('spikformer_4_384_cifar', embed_dim=64, depth=1, num_heads=4, T=2)
    assert (m.embed_dim, len(m.block), m.block[0].attn.num_heads, m.T) == (64, 1, 4, 2)
    assert m.block[0].mlp.fc1.out_features == 256 and m.block[0].attn.q_proj.bias is not None
    m = small('spikformer_8_512', mlp_ratio=2, num_classes=7, img_size=64, in_chans=1, tau=1.5)
    assert m.block[0].mlp.fc1.out_channels == 64 and m.head.out_features == 7
    assert m.patch_embed.stages[0].lif.tau == 1.5 and m(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    assert m.patch_embed.stages[0].conv.in_channels == 1 and m.block[0].attn.q_proj.bias is None


def test_static_and_event_inputs_and_per_step():
    torch.manual_seed(0)
    m = small(T=3).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    per_step = m(x, return_per_step=True)
    assert per_step.shape == (3, 2, 10)
    assert (m(x) - per_step.mean(0)).abs().max() < 1e-12
    events = x.unsqueeze(1).expand(2, 3, 3, 32, 32)           # the image as 3 event frames [B, T, C, H, W]
    assert torch.equal(m(events), m(x))
    assert m(events[:, :2], return_per_step=True).shape == (2, 2, 10)
    assert (m(x[:1]) - m(x)[:1]).abs().max() < 1e-12           # samples are independent in eval
    assert torch.equal(m(x), m(x))                            # nothing leaks between calls
    stream = m.forward_features(x, return_per_step=True)
    assert stream.shape == (3, 2, 32, 8, 8)
    assert torch.equal(m.forward_head(stream, pre_logits=True), stream.mean((3, 4)).mean(0))
    assert torch.equal(m.forward_features(x), stream.mean(0))                  # timm's [B, C, H, W]: mean over T
    assert (m.forward_head(m.forward_features(x)) - m(x)).abs().max() < 1e-12  # the linear head commutes with it
    m.reset_classifier(0)
    assert m(x).shape == (2, 32)


@pytest.mark.parametrize('shape, match', [((3, 32, 32), 'rank 3'), ((2, 1, 32, 32), 'in_chans=3'),
                                          ((2, 3, 28, 28), r'\(32, 32\)'), ((2, 4, 2, 3, 32, 32), 'rank 6')])
def test_clear_errors_on_bad_input(shape, match):
    with pytest.raises(ValueError, match=match):
        small()(torch.zeros(shape))


def test_clear_errors_on_bad_config():
    with pytest.raises(ValueError, match='divisible by num_heads'):
        small(num_heads=3)
    with pytest.raises(ValueError, match='patch_size'):
        small(patch_size=6)
    with pytest.raises(TypeError, match='not hierarchical'):
        small(embed_dim=[32, 64])
    with pytest.raises(ValueError, match='unknown projection type'):
        small(attn_proj='conv3d')


def test_original_checkpoint_file(load_fixture, tmp_path):
    """A training checkpoint as the original scripts write it: DDP prefix, ``model`` wrapper, argparse args."""
    fx = load_fixture('spikformer/cifar10dvs_e32_d1_h2_T2_img128')
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save({'epoch': 9, 'arch': 'spikformer', 'args': argparse.Namespace(model='spikformer', T=16),
                'model': {f'module.{k}': v for k, v in fx['state_dict'].items()}}, path)
    model = fixture_model(fx, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(model(fx['input']), fixture_model(fx).eval()(fx['input']))

    broken = dict(fx['state_dict'])
    broken.pop('block.0.attn.k_conv.weight')
    broken['block.0.attn.extra.weight'] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r'missing keys \(1\): block\.0\.attn\.k_proj\.weight') as err:
        snnzoo.load_checkpoint(model, broken)
    assert 'unexpected keys (1): block.0.attn.extra.weight' in str(err.value)
    with pytest.raises(RuntimeError, match='shape mismatch'):
        snnzoo.load_checkpoint(small('spikformer_2_256_dvs', embed_dim=64), fx['state_dict'])


def test_ssa_matches_spikingjelly():
    """Post-activation SSA (1x1 conv projections, scale 0.125) equals SpikingJelly 2.0's SpikingSelfAttention."""
    sj_attention = pytest.importorskip('spikingjelly.activation_based.layer.attention')
    gen = torch.Generator().manual_seed(1)
    dim, heads = 32, 4
    ours = SpikingSelfAttention(dim, heads).double()
    ref = sj_attention.SpikingSelfAttention(dim, heads).double()
    with torch.no_grad():
        for bn in (ours.q_bn, ours.k_bn, ours.v_bn, ours.out_bn):
            bn.weight.uniform_(1.0, 3.0, generator=gen)
            bn.bias.normal_(0.0, 0.3, generator=gen)
            bn.running_var.uniform_(0.5, 1.5, generator=gen)
    copy_to_spikingjelly(ours, ref, 'qkv')
    check_matches_spikingjelly(ours, ref, torch.randint(0, 3, (3, 2, dim, 5, 5), generator=gen).double(), gen)


@pytest.mark.parametrize('tokens', [4, 64])
def test_attention_product_in_either_order(tokens):
    """s * Q K^T V per head (both evaluation orders, d < N and d >= N) against an explicit float64 einsum."""
    gen = torch.Generator().manual_seed(tokens)
    attn = SpikingSelfAttention(48, num_heads=3, scale=0.25)
    q, k, v = ((torch.rand(2, 3, 48, tokens, generator=gen) < 0.3).double() for _ in range(3))
    heads = [t.unflatten(2, (3, 16)).transpose(-1, -2) for t in (q, k, v)]     # [T, B, h, N, d]
    expected = 0.25 * torch.einsum('tbhnd,tbhmd,tbhme->tbhne', *heads)
    assert torch.equal(attn.attention(q, k, v), expected.transpose(-1, -2).flatten(2, 3))


def test_cml_moves_the_pool_before_the_neuron():
    """SPS stage orders: the pool follows the neuron (spikes) in Spikformer, precedes it in CML; /4 vs /16 pooling."""
    base, cml = SpikingPatchSplitting(3, 64, 4), SpikingPatchSplitting(3, 64, 4, cml=True)
    assert [s.order for s in base.stages] == [('conv', 'bn', 'lif')] * 2 + [('conv', 'bn', 'lif', 'pool')] * 2
    assert [s.order for s in cml.stages] == [('conv', 'bn', 'lif')] * 2 + [('conv', 'bn', 'pool', 'lif')] * 2
    assert all(hasattr(s, 'pool') for s in SpikingPatchSplitting(3, 64, 16).stages)
    x = torch.rand(2, 1, 3, 16, 20)
    assert base(x).shape == (2, 1, 64, 4, 5) and SpikingPatchSplitting(3, 64, 16)(x).shape == (2, 1, 64, 1, 2)


def test_stem_runs_channels_last_with_the_values_of_nchw(monkeypatch):
    """On the CPU the stem computes on channels-last frames: the same outputs and weight gradients as on NCHW frames
    (float64), and a contiguous stream for the blocks."""
    torch.manual_seed(0)
    sps = SpikingPatchSplitting(3, 64, 4).double()
    x = torch.rand(2, 3, 3, 16, 16, dtype=torch.float64) * 4
    frames = channels_last_frames(x)
    assert frames.flatten(0, 1).is_contiguous(memory_format=torch.channels_last) and torch.equal(frames, x)

    def run():
        sps.zero_grad()
        out = sps(x)
        out.square().sum().backward()
        return out, [p.grad.clone() for p in sps.parameters()]

    out, grads = run()
    monkeypatch.setattr(patch_embed, 'channels_last_frames', lambda t: t)
    ref, ref_grads = run()
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_training_options():
    torch.manual_seed(0)
    m = small(depth=2, drop_rate=0.1, drop_path_rate=0.2)
    assert m.block[0].drop_path.__class__.__name__ == 'Identity' and m.block[1].drop_path.drop_prob == 0.2
    x = torch.rand(4, 3, 32, 32)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    m.set_grad_checkpointing()
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
