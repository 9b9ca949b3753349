"""Spikingformer and Spikingformer-CML against the original implementations' fixtures and specs, hand-built
references of the pre-activation layers, and the model protocol (timm, inputs, errors, original checkpoint files)."""
import argparse

import pytest
import timm
import torch
from reference_check import fixture_model, fixture_tests, spec_tests

import snnzoo
from snnzoo.layers import LIFNode
from snnzoo.layers.mlp import SpikingMlp
from snnzoo.layers.patch_embed import SpikingTokenizer
from snnzoo.models.spikingformer import Spikingformer

NAMES = ('spikingformer_8_384', 'spikingformer_6_512', 'spikingformer_8_512', 'spikingformer_10_512',
         'spikingformer_8_768', 'spikingformer_4_384_cifar', 'spikingformer_4_256_cifar', 'spikingformer_2_384_cifar',
         'spikingformer_2_256_dvs', 'spikingformer_cml_4_384_cifar', 'spikingformer_cml_2_256_dvs',
         'spikingformer_cml_8_384', 'spikingformer_cml_8_512', 'spikingformer_cml_8_768')
FIXTURES = ('spikingformer/cifar10_e32_d1_h2_T2_img32', 'spikingformer/cifar10dvs_e32_d1_h2_T2_img128',
            'spikingformer/gesture_e32_d1_h4_T3_img128_c11', 'spikingformer/imagenet_e32_d1_h2_T2_img64',
            'spikingformer_cml/cifar_e32_d1_t2_img32_nc10', 'spikingformer_cml/cifar10dvs_e32_d1_t2_img128_nc10',
            'spikingformer_cml/gesture_e32_d1_t3_img128_nc11', 'spikingformer_cml/imagenet_e32_d1_t2_img64_nc10')
SPECS = tuple(f'{family}/{config}' for family in ('spikingformer', 'spikingformer_cml')
              for config in ('cifar10_4-384', 'cifar100_4-384', 'cifar10dvs_2-256', 'gesture_2-256', 'imagenet_8-384',
                             'imagenet_8-512', 'imagenet_8-768'))
test_fixture_reproduced = fixture_tests(FIXTURES)
test_spec_parameter_count_and_keys = spec_tests(SPECS)


def small(name='spikingformer_4_384_cifar', **kwargs) -> Spikingformer:
    return snnzoo.create_model(name, **dict(dict(embed_dim=32, depth=1, num_heads=2, T=2, backend='torch'), **kwargs))


@pytest.mark.parametrize('name, tau, cml', [('spikingformer_2_256_dvs', 1.5, False),
                                            ('spikingformer_cml_2_256_dvs', 1.75, True),
                                            ('spikingformer_cml_8_384', 2.0, True),
                                            ('spikingformer_4_384_cifar', 2.0, False)])
def test_registered_with_timm(name, tau, cml):
    assert set(NAMES) <= set(snnzoo.list_models('spikingformer*'))
    model = timm.create_model(name, embed_dim=32, num_heads=2, backend='torch')
    assert isinstance(model, Spikingformer) and model.block[0].attn.preact
    assert {m.tau for m in model.modules() if isinstance(m, LIFNode)} == {tau}
    assert any('pool' in s.order and s.order[-1] == 'pool' for s in model.patch_embed.stages) == cml
    assert model.pretrained_cfg['num_classes'] == model.num_classes


def test_keyword_overrides():
    m = snnzoo.create_model('spikingformer_4_384_cifar', embed_dim=64, depth=1, num_heads=4, T=2)
    assert (m.embed_dim, len(m.block), m.block[0].attn.num_heads, m.T) == (64, 1, 4, 2)
    m = small('spikingformer_2_256_dvs', num_classes=11, img_size=64, mlp_ratio=1.5)
    assert m.block[0].mlp.fc1.out_channels == 48
    out = m(torch.rand(2, 5, 2, 64, 64), return_per_step=True)
    assert out.shape == (5, 2, 11)


def test_static_and_event_inputs_and_per_step():
    torch.manual_seed(0)
    m = small('spikingformer_cml_8_384', T=3, img_size=64).double().eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    per_step = m(x, return_per_step=True)
    assert per_step.shape == (3, 2, 1000)
    assert (m(x) - per_step.mean(0)).abs().max() < 1e-12
    assert torch.equal(m(x.unsqueeze(1).expand(2, 3, 3, 64, 64)), m(x))
    assert (m(x[1:]) - m(x)[1:]).abs().max() < 1e-12             # samples are independent in eval
    assert m.forward_features(x, return_per_step=True).shape == (3, 2, 32, 4, 4)
    assert m.forward_features(x).shape == (2, 32, 4, 4)


@pytest.mark.parametrize('shape, match', [((2, 3, 32), 'rank 3'), ((2, 2, 32, 32), 'in_chans=3'),
                                          ((2, 3, 64, 64), r'\(32, 32\)'), ((2, 3, 4, 32, 32), 'time second')])
def test_clear_errors_on_bad_input(shape, match):
    with pytest.raises(ValueError, match=match):
        small()(torch.zeros(shape))


def test_original_checkpoint_file(load_fixture, tmp_path):
    """A training checkpoint as the original scripts write it: DDP prefix, ``model`` wrapper, argparse args."""
    fx = load_fixture('spikingformer_cml/gesture_e32_d1_t3_img128_nc11')
    path = tmp_path / 'model_best.pth'
    torch.save({'epoch': 2, 'args': argparse.Namespace(model='Spikingformer', T=16, dim=256),
                'model': {f'module.{k}': v for k, v in fx['state_dict'].items()}}, path)
    model = fixture_model(fx, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(model(fx['input']), fixture_model(fx).eval()(fx['input']))

    broken = {k: v for k, v in fx['state_dict'].items() if not k.startswith('block.0.mlp.mlp2_bn.')}
    broken['block.0.mlp.mlp3_conv.weight'] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r'missing keys \(5\): block\.0\.mlp\.fc2_bn\.weight') as err:
        snnzoo.load_checkpoint(model, broken)
    assert 'unexpected keys (1): block.0.mlp.mlp3_conv.weight' in str(err.value)


def test_preact_mlp_against_hand_built_reference():
    """BN(W2 LIF(BN(W1 LIF(x) + b1)) + b2) spelt out with torch.nn layers (pre-activation, membrane output)."""
    torch.manual_seed(0)
    mlp = SpikingMlp(8, 16, preact=True).double().train()
    x = torch.randn(3, 2, 8, 4, 4, dtype=torch.float64)
    lif = LIFNode(tau=2.0, detach_reset=True)

    def conv_bn(conv, bn, s):                                     # Conv2d 1x1 and train-mode BatchNorm2d
        y = conv(s.flatten(0, 1))
        return torch.nn.functional.batch_norm(y, None, None, bn.weight, bn.bias, training=True).unflatten(0, (3, 2))
    expected = conv_bn(mlp.fc2, mlp.fc2_bn, lif(conv_bn(mlp.fc1, mlp.fc1_bn, lif(x))))
    assert (mlp(x) - expected).abs().max() < 1e-12


@pytest.mark.parametrize('cml, orders', [
    (False, [('conv', 'bn'), ('lif', 'conv', 'bn'), ('lif', 'conv', 'bn'), ('lif', 'pool', 'conv', 'bn'),
             ('lif', 'pool', 'conv', 'bn')]),
    (True, [('conv', 'bn'), ('lif', 'conv', 'bn'), ('lif', 'conv', 'bn', 'pool'), ('lif', 'conv', 'bn', 'pool'),
            ('lif', 'conv', 'bn')])])
def test_tokenizer_stage_orders(cml, orders):
    """CIFAR tokenizer (/4): the original pools spikes before block3/4's convs; CML pools proj2/proj3's BN output."""
    tok = SpikingTokenizer(3, 64, patch_size=4, cml=cml)
    assert [s.order for s in tok.stages] == orders
    assert [s.conv.out_channels for s in tok.stages] == [8, 16, 32, 64, 64]
    assert tok(torch.rand(2, 1, 3, 32, 32)).shape == (2, 1, 64, 8, 8)
