"""Checking a model against a reference fixture of ``shared/reference/fixtures`` (see the README there).

Used by every family's tests; :func:`check_spec` checks a paper configuration of ``specs/``,
:func:`check_checkpoint_file` an original training checkpoint, :func:`check_matches_spikingjelly` an attention layer
against SpikingJelly 2.0's; :func:`fixture_tests` and :func:`spec_tests` make a family's fixture and spec tests.
The model contract: :func:`check_static_and_event_inputs` and :func:`check_input_errors`.
"""
import pytest
import torch

import snnzoo
from snnzoo.models._checkpoint import filter_checkpoint


def fixture_model(fx: dict, *, weights=None, **overrides) -> torch.nn.Module:
    """``snnzoo.create_model(meta.snnzoo.name, backend='torch', **meta.snnzoo.kwargs).double()`` with the fixture's
    weights, or with ``weights`` (a checkpoint file or state dict) loaded in their place."""
    meta = fx['meta']['snnzoo']
    model = snnzoo.create_model(meta['name'], **dict(meta['kwargs'], backend='torch', **overrides)).double()
    return snnzoo.load_checkpoint(model, fx['state_dict'] if weights is None else weights)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_fixture(fx: dict, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    """Eval output, train output, input gradient and every parameter gradient of the fixture, by parameter name.

    Parameter gradients: the full tensor within ``atol`` where the fixture stores it, and (shape, norm, sum) within
    ``rtol`` relative. Conv biases feeding a train-mode BatchNorm get a gradient that is 0 up to rounding (~1e-16) in
    both codes, hence the 1e-12 absolute floor on norm and sum.
    """
    model = fixture_model(fx)
    x = fx['input'].clone()
    model.eval()
    with torch.no_grad():
        assert (model(x) - fx['eval_output']).abs().max() < atol
    model.train()
    x.requires_grad_(True)
    outs = _as_list(model(x))
    refs, probes = _as_list(fx['train_output']), _as_list(fx['grad_probe'])
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert (out - ref).abs().max() < atol
    sum((out * probe).sum() for out, probe in zip(outs, probes)).backward()
    assert (x.grad - fx['grads']['input']).abs().max() < atol

    params = dict(model.named_parameters())
    stats = filter_checkpoint(fx['grad_stats'], model)
    dropped = {k for k in fx['grad_stats'] if not filter_checkpoint({k: None}, model)}
    assert dropped == set(fx['meta']['params_without_grad'])          # exactly the never-used ones, by name
    assert sorted(stats) == sorted(params)
    # the full gradients the fixture stores: all of them, or a subset for the large ResNet fixtures
    full = filter_checkpoint(fx['grads'].get('params') or fx['grads'].get('params_subset') or {}, model)
    for name, ref in stats.items():
        grad = params[name].grad
        assert ref is not None and grad is not None, name
        assert list(grad.shape) == list(ref['shape']), name
        for value, expected in ((grad.norm().item(), ref['norm']), (grad.sum().item(), ref['sum'])):
            assert abs(value - expected) <= rtol * abs(expected) + 1e-12, (name, value, expected)
        if name in full:
            assert (grad - full[name]).abs().max() < atol, name


def check_spec(spec: dict) -> int:
    """A paper configuration: snnzoo's parameter count is the original's minus exactly its never-used parameters, the
    checkpoint filter drops exactly those by name, and every other original key maps onto snnzoo's state_dict with its
    own shape. The model is built on the meta device; returns its parameter count."""
    with torch.device('meta'):
        model = snnzoo.create_model(spec['snnzoo']['name'], **spec['snnzoo']['kwargs'])
        original = {e['name']: torch.empty(e['shape']) for e in spec['state_dict']}
    numel = {e['name']: e['numel'] for e in spec['state_dict']}
    unused = sum(numel[k] for k in spec['params_without_grad'])
    count = sum(p.numel() for p in model.parameters())
    assert count == spec['total_params'] - unused
    assert set(original) - set(spec['params_without_grad']) == {k for k in original if filter_checkpoint({k: 0}, model)}
    mapped, own = filter_checkpoint(original, model), model.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    return count


def check_checkpoint_file(fx: dict, path) -> torch.nn.Module:
    """The fixture's model loaded from ``path`` (a checkpoint as the original saves it) reproduces the fixture's eval
    output within 1e-6; returns that model (in eval mode)."""
    model = fixture_model(fx, weights=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(fx['input']), fx['eval_output'], rtol=0, atol=1e-6)
    return model


def copy_to_spikingjelly(ours: torch.nn.Module, ref: torch.nn.Module, fused: str) -> None:
    """Copy our attention's weights into SpikingJelly 2.0's ``ref``: the ``{p}_proj`` convs and ``{p}_bn`` BatchNorms
    for each ``p`` of ``fused`` (``'qkv'`` or ``'qk'``) into ``ref.{fused}_conv_bn``, ``out_proj`` / ``out_bn`` into
    ``ref.proj_conv_bn``. SpikingJelly's output projection has no bias, so ours is zeroed."""
    conv_bn = getattr(ref, f'{fused}_conv_bn')
    with torch.no_grad():
        ours.out_proj.bias.zero_()
        conv_bn[0].weight.copy_(torch.cat([getattr(ours, f'{p}_proj').weight for p in fused]))
        ref.proj_conv_bn[0].weight.copy_(ours.out_proj.weight)
        for n in ('weight', 'bias', 'running_mean', 'running_var'):
            getattr(conv_bn[1], n).copy_(torch.cat([getattr(getattr(ours, f'{p}_bn'), n) for p in fused]))
            getattr(ref.proj_conv_bn[1], n).copy_(getattr(ours.out_bn, n))


def check_matches_spikingjelly(ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor,
                               gen: torch.Generator) -> None:
    """Eval, then train mode: ``ours(x)`` [T, B, C, H, W] equals SpikingJelly 2.0's ``ref`` on the flattened tokens
    [T, B, C, H * W] (``ref`` fires, but not everywhere), and the input gradients of a random probe (drawn from
    ``gen``) agree within 1e-12; float64."""
    from spikingjelly.activation_based import functional
    for train in (False, True):
        ours.train(train)
        ref.train(train)
        functional.reset_net(ref)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = ours(xa).flatten(3), ref(xb.flatten(3))
        assert 0 < b.mean() < 0.9
        assert torch.equal(a, b)
        g = torch.randn(a.shape, generator=gen, dtype=a.dtype)
        (a * g).sum().backward()
        (b * g).sum().backward()
        assert (xa.grad - xb.grad).abs().max() < 1e-12


def fixture_tests(fixtures):
    """``test_fixture_reproduced`` over a family's fixture names (``family/name``), for its test module to bind."""
    @pytest.mark.parametrize('name', fixtures)
    def test_fixture_reproduced(load_fixture, name):
        """Eval / train outputs, input gradient and every parameter gradient of the original code (float64)."""
        check_fixture(load_fixture(name))

    return test_fixture_reproduced


def spec_tests(specs):
    """``test_spec_parameter_count_and_keys`` over a family's paper configurations (``family/config``)."""
    @pytest.mark.parametrize('config', specs)
    def test_spec_parameter_count_and_keys(load_spec, config):
        """Paper configurations: the original's count minus exactly its never-used parameters; every original key
        maps onto snnzoo's state_dict with its own shape."""
        check_spec(load_spec(config))

    return test_spec_parameter_count_and_keys


def check_static_and_event_inputs(model: torch.nn.Module, x: torch.Tensor, per_step_shape: tuple,
                                  atol: float = 0.0) -> None:
    """The output for the static batch ``x`` [B, C, H, W] equals (within ``atol``) that for its frames repeated T times
    as events [B, T, C, H, W], is the mean over steps of the per-step output (within 1e-12; shape ``per_step_shape``,
    [T, B, classes]), and is the same again on a second call (nothing leaks between calls)."""
    out = model(x)
    events = x.unsqueeze(1).expand(-1, per_step_shape[0], -1, -1, -1)
    torch.testing.assert_close(model(events), out, rtol=0, atol=atol)
    per_step = model(x, return_per_step=True)
    assert per_step.shape == per_step_shape
    torch.testing.assert_close(per_step.mean(0), out, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x), out, rtol=0, atol=0)


def check_input_errors(model: torch.nn.Module, cases) -> None:
    """``model(torch.randn(shape))`` raises a ValueError matching ``match`` for each ``(shape, match)`` of ``cases``."""
    for shape, match in cases:
        with pytest.raises(ValueError, match=match):
            model(torch.randn(shape))
