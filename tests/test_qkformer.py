"""QKFormer against the original implementation's fixtures and specs, SpikingJelly 2.0's Q-K / self-attention layers,
and the properties the corrected (``reference_quirks=False``) model must have."""
import argparse
from functools import partial

import pytest
import timm
import torch

import snnzoo
from snnzoo.layers import LIFNode
from snnzoo.layers.qk_attention import ChannelQKAttention, TokenQKAttention
from snnzoo.models.qkformer import QKFormer

from reference_check import (check_checkpoint_file, check_matches_spikingjelly, check_spec, copy_to_spikingjelly,
                             fixture_model, fixture_tests)

NAMES = ('qkformer_10_384', 'qkformer_10_512', 'qkformer_10_768', 'qkformer_4_384_cifar', 'qkformer_2_256_dvs')


def _reference_files(kind: str, suffix: str, public: tuple) -> list:
    """Every qkformer fixture / spec present (so added ones are checked too), else the public names (then skipped);
    as ``qkformer/NAME``."""
    from conftest import shared_path
    found = sorted(p.stem for p in (shared_path() / 'reference' / kind / 'qkformer').glob(f'*{suffix}'))
    return [f'qkformer/{name}' for name in (found or public)]


FIXTURES = _reference_files('fixtures', '.pt', ('cifar_e64_d3_t2_img32_nc10', 'cifar10dvs_e64_d4_t2_img64_nc10',
                                                'gesture_e64_d4_t2_img64_nc11', 'imagenet_e64_d4_t2_img64_nc10'))
SPECS = _reference_files('specs', '.json', ('cifar10_4-384', 'cifar100_4-384', 'cifar10dvs_2-256', 'gesture_2-256',
                                            'imagenet_10-384', 'imagenet_10-512', 'imagenet_10-768'))


def small(name='qkformer_4_384_cifar', **kwargs) -> QKFormer:
    args = dict(embed_dim=32, num_heads=2, T=2, backend='torch')
    args.update(kwargs)
    return snnzoo.create_model(name, **args)


# ---------------------------------------------------------------------------------------------------- fixtures

test_fixture_reproduced = fixture_tests(FIXTURES)


def test_fixture_depends_on_quirk(load_fixture):
    """The corrected model differs from the original exactly through the SSA proj LIF: same outputs up to there."""
    fx = load_fixture('qkformer/imagenet_e64_d4_t2_img64_nc10')
    quirky, fixed = fixture_model(fx).eval(), fixture_model(fx, reference_quirks=False).eval()
    x = fx['input']
    with torch.no_grad():
        assert (fixed(x) - fx['eval_output']).abs().max() > 1e-3
        feats = {}
        for tag, m in (('quirk', quirky), ('fixed', fixed)):
            m.stage3[0].attn.out_bn.register_forward_hook(lambda mod, inp, out, tag=tag: feats.setdefault(tag, out))
            m(x)
        assert torch.equal(feats['quirk'], feats['fixed'])


# ------------------------------------------------------------------------------- corrected behaviour (quirk off)

def _randomise(model, gen, bias=0.3):
    """Seeded conv weights and BatchNorms that make every LIF fire often, in eval and in train mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(1.0, 2.0, generator=gen)
                m.bias.normal_(bias, 0.2, generator=gen)
                m.running_var.uniform_(0.1, 0.3, generator=gen)
            elif isinstance(m, torch.nn.Conv1d):
                m.weight.normal_(0.0, 1.5 / m.in_channels ** 0.5, generator=gen)


def test_corrected_model_treats_batch_and_time_correctly(load_fixture):
    """Corrected: each sample's output is independent of the rest of the batch and of its order, and step t does not
    depend on later steps; the quirk model (the original) fails the first property."""
    fx = load_fixture('qkformer/cifar_e64_d3_t2_img32_nc10')
    x = fx['input']
    quirky, fixed = fixture_model(fx).eval(), fixture_model(fx, reference_quirks=False).eval()
    with torch.no_grad():
        joint = fixed(x, return_per_step=True)
        for b in range(x.shape[0]):
            assert torch.equal(fixed(x[b:b + 1], return_per_step=True)[:, 0], joint[:, b])
        assert torch.equal(fixed(x.flip(0), return_per_step=True), joint.flip(1))
        assert not torch.equal(quirky(x[1:]), quirky(x)[1:])
        fixed.T = 1
        assert torch.equal(fixed(x, return_per_step=True)[0], joint[0])


def test_corrected_ssa_matches_spikingjelly():
    """The last stage's corrected SSA equals SpikingJelly 2.0's SpikingSelfAttention (fused qkv conv) in float64."""
    sj_attention = pytest.importorskip('spikingjelly.activation_based.layer.attention')
    gen = torch.Generator().manual_seed(3)
    model = small(depth=3, embed_dim=32, num_heads=4).double()
    ours = model.stage3[0].attn
    _randomise(ours, gen, bias=1.0)
    ref = sj_attention.SpikingSelfAttention(32, 4).double()
    copy_to_spikingjelly(ours, ref, 'qkv')
    check_matches_spikingjelly(ours, ref, torch.randint(0, 3, (3, 2, 32, 6, 6), generator=gen).double(), gen)


@pytest.mark.parametrize('cls, qka_type', [(TokenQKAttention, 'token'), (ChannelQKAttention, 'channel')])
def test_qk_attention_matches_spikingjelly(cls, qka_type):
    """QKTA / QKCA against SpikingJelly 2.0's QKAttention (fused q/k conv, proj without bias) in float64."""
    sj_attention = pytest.importorskip('spikingjelly.activation_based.layer.attention')
    gen = torch.Generator().manual_seed(1)
    dim, heads = 16, 4
    neuron = partial(LIFNode, tau=2.0, detach_reset=True, backend='torch')
    ours = (cls(dim, heads, neuron) if cls is TokenQKAttention else cls(dim, neuron)).double()
    ref = sj_attention.QKAttention(dim, heads, qka_type=qka_type).double()
    _randomise(ours, gen)
    copy_to_spikingjelly(ours, ref, 'qk')
    check_matches_spikingjelly(ours, ref, torch.randint(0, 3, (3, 2, dim, 4, 5), generator=gen).double(), gen)


# ------------------------------------------------------------------------------------------- paper configurations

@pytest.mark.parametrize('config', SPECS)
def test_spec_parameter_count_and_keys(load_spec, config):
    spec = load_spec(config)
    assert not spec['params_without_grad']      # QKFormer uses every parameter it builds: snnzoo drops none
    check_spec(spec)


# -------------------------------------------------------------------------------------------------- model API

def test_registered_with_timm():
    assert set(NAMES) <= set(snnzoo.list_models('qkformer*'))
    model = timm.create_model('qkformer_2_256_dvs', embed_dim=32, num_heads=4, backend='torch')
    assert isinstance(model, QKFormer) and model.layout == 'dvs' and model.T == 16
    assert model.pretrained_cfg['input_size'] == (2, 128, 128)
    defaults = {'qkformer_10_384': (384, [1, 2, 7], 6), 'qkformer_10_768': (768, [1, 2, 7], 12),
                'qkformer_4_384_cifar': (384, [1, 1, 2], 8), 'qkformer_2_256_dvs': (256, [1, 1], 16)}
    for name, (dim, depths, heads) in defaults.items():
        with torch.device('meta'):
            m = timm.create_model(name)
        assert (m.num_features, m.depths, m.num_heads[0]) == (dim, depths, heads)


def test_keyword_overrides():
    m = small('qkformer_10_384', embed_dim=[16, 24, 48], depth=[2, 1, 3], num_heads=[2, 3, 4], mlp_ratio=2,
              num_classes=7, in_chans=1, T=3, attn_type='channel')
    assert m.embed_dims == [16, 24, 48] and m.depths == [2, 1, 3] and m.num_heads == [2, 3, 4] and m.T == 3
    assert [len(m.stage1), len(m.stage2), len(m.stage3)] == [2, 1, 3]
    assert isinstance(m.stage1[0].attn, ChannelQKAttention) and m.stage2[0].mlp.fc1.out_channels == 48
    assert m.patch_embed1.stages[0].conv.in_channels == 1 and m.head.out_features == 7
    assert m(torch.randn(2, 1, 24, 20)).shape == (2, 7)
    m = small('qkformer_4_384_cifar', embed_dim=64, depth=5, num_heads=4)
    assert m.embed_dims == [16, 32, 64] and m.depths == [1, 1, 3] and isinstance(m.stage2[0].attn, TokenQKAttention)
    assert small('qkformer_2_256_dvs', depth=3).depths == [1, 2]


def test_static_event_inputs_and_per_step():
    m = small('qkformer_2_256_dvs', embed_dim=32, num_heads=2, T=3, num_classes=5).double().eval()
    x = torch.rand(2, 2, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        static = m(x, return_per_step=True)
        assert static.shape == (3, 2, 5)
        assert torch.equal(m(x.unsqueeze(1).expand(2, 3, 2, 32, 32), return_per_step=True), static)
        assert torch.allclose(m(x), static.mean(0), atol=1e-12)
        assert m(torch.rand(2, 5, 2, 32, 32, dtype=torch.float64), return_per_step=True).shape == (5, 2, 5)
        feats = m.forward_features(x, return_per_step=True)
        assert feats.shape == (3, 2, 32, 2, 2)
        assert torch.equal(m.forward_features(x), feats.mean(0))
        assert m.forward_head(feats, pre_logits=True).shape == (2, 32)
    m.reset_classifier(0)
    assert m.get_classifier().__class__ is torch.nn.Identity and m(x).shape == (2, 32)
    m.reset_classifier(3)
    assert m.double()(x).shape == (2, 3)


def test_clear_errors():
    m = small()
    with pytest.raises(ValueError, match='in_chans=3'):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match='rank 3'):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='num_heads=5'):
        small(num_heads=5)
    with pytest.raises(ValueError, match='at least'):
        small('qkformer_10_384', depth=2)
    with pytest.raises(ValueError, match='one value per stage'):
        small('qkformer_2_256_dvs', embed_dim=[16, 32, 64])
    with pytest.raises(ValueError, match='layout'):
        small(layout='swin')
    with pytest.raises(ValueError, match='attn_type'):
        small(attn_type='spatial')
    with pytest.raises(ValueError, match='expects \\[T, B, 8, H, W\\]'):
        TokenQKAttention(8, 2)(torch.randn(2, 2, 4, 3, 3))
    with pytest.raises(ValueError, match='divisible by num_heads'):
        TokenQKAttention(8, 3)


def test_original_checkpoint_file(load_fixture, tmp_path):
    """An original training checkpoint (DDP ``module.`` keys under ``model``, with optimizer state and args) loads."""
    fx = load_fixture('qkformer/gesture_e64_d4_t2_img64_nc11')
    path = tmp_path / 'checkpoint.pth'
    torch.save({'model': {f'module.{k}': v for k, v in fx['state_dict'].items()}, 'optimizer': {'state': {}},
                'epoch': 3, 'args': argparse.Namespace(model='QKFormer', T=16)}, path)
    check_checkpoint_file(fx, path)
    with pytest.raises(RuntimeError, match='shape mismatch'):
        fixture_model(fx, weights=path, embed_dim=32, num_heads=8)


def test_grad_checkpointing_and_drop_path():
    m = small(depth=3, drop_path_rate=0.2).double().eval()
    assert [type(b.drop_path).__name__ for s in (m.stage1, m.stage2, m.stage3) for b in s] == \
        ['Identity', 'DropPath', 'DropPath']
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    ref = m(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    m.set_grad_checkpointing(True)
    out = m(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(out, ref) and torch.allclose(g, g_ref, rtol=0, atol=1e-12)


def test_dvs_training_step_survives_cpu_conv_bug():
    """torch 2.14's CPU weight gradient of a strided 1x1 conv on channels-last input with 2-7 channels corrupts the
    heap; QKFormer's stem shortcut at embed_dim=32 (4 channels in) is such a conv. Ten training steps run in a subprocess
    (the crash would kill the test process)."""
    import subprocess
    import sys
    code = (
        "import torch, snnzoo\n"
        "torch.manual_seed(0)\n"
        "m = snnzoo.create_model('qkformer_2_256_dvs', embed_dim=32, num_heads=2, T=2, img_size=32, num_classes=4)\n"
        "for _ in range(10):\n"
        "    m.zero_grad(); m(torch.rand(3, 2, 2, 32, 32)).sum().backward()\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]
