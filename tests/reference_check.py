"""Checking a model against a reference fixture of ``shared/reference/fixtures`` (see the README there).

Used by every family's tests; :func:`check_spec` checks a paper configuration of ``specs/``.
"""
import torch

import snnzoo
from snnzoo.models._checkpoint import filter_checkpoint


def fixture_model(fx: dict, **overrides) -> torch.nn.Module:
    """``snnzoo.create_model(meta.snnzoo.name, backend='torch', **meta.snnzoo.kwargs).double()`` with the weights."""
    meta = fx['meta']['snnzoo']
    model = snnzoo.create_model(meta['name'], **dict(meta['kwargs'], backend='torch', **overrides)).double()
    return snnzoo.load_checkpoint(model, fx['state_dict'])


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
