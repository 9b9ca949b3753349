"""Checking an original implementation's reference fixture against snnzoo (shared by the ResNet family tests).

See ``shared/reference/README.md`` ("How a fixture is checked"): float64, eval output, train output and input gradient
within 1e-6 max abs, parameter gradients (the stored subset, and the (shape, norm, sum) statistics of all) matching.
"""
import json

import torch

import snnzoo
from snnzoo.models._checkpoint import filter_checkpoint

TOL = 1e-6


def load_fixture(path):
    return torch.load(path, weights_only=True)


def build_from_fixture(fx):
    meta = fx['meta']['snnzoo']
    model = snnzoo.create_model(meta['name'], backend='torch', **meta['kwargs']).double()
    snnzoo.load_checkpoint(model, fx['state_dict'])
    return model


def original_names(fx, model) -> dict:
    """snnzoo parameter name for every original parameter name of ``grad_stats`` (through checkpoint_filter_fn)."""
    return {orig: new for new, orig in filter_checkpoint({k: k for k in fx['grad_stats']}, model).items()}


def check_fixture(fx):
    """Run the fixture's checks; returns the max abs differences for the report."""
    model = build_from_fixture(fx)
    x = fx['input']
    model.eval()
    with torch.no_grad():
        eval_out = model(x)
    model.train()
    xg = x.clone().requires_grad_(True)
    train_out = model(xg)
    (train_out * fx['grad_probe']).sum().backward()
    diffs = {
        'eval': (eval_out - fx['eval_output']).abs().max().item(),
        'train': (train_out - fx['train_output']).abs().max().item(),
        'input_grad': (xg.grad - fx['grads']['input']).abs().max().item(),
    }
    params = dict(model.named_parameters())
    stored = fx['grads'].get('params', fx['grads'].get('params_subset'))
    diffs['param_grads'] = max((params[k].grad - v).abs().max().item()
                               for k, v in filter_checkpoint(dict(stored), model).items())
    names = original_names(fx, model)
    assert sorted(names.values()) == sorted(params), "grad_stats must cover exactly snnzoo's parameters"
    worst = 0.0
    for orig, stats in fx['grad_stats'].items():
        grad = params[names[orig]].grad
        assert (grad is None) == (stats is None), orig
        if stats is None:
            continue
        assert list(grad.shape) == stats['shape'], orig
        # |diff| <= TOL |expected| + 1e-12: the floor is for gradients that are rounding noise (a conv bias feeding a
        # train-mode BN has an exactly zero gradient in exact arithmetic)
        for value, expected in ((grad.norm().item(), stats['norm']), (grad.sum().item(), stats['sum'])):
            worst = max(worst, abs(value - expected) / (abs(expected) + 1e-12 / TOL))
    diffs['grad_stats_rel'] = worst
    for key, value in diffs.items():
        assert value < TOL, f"{fx['meta']['snnzoo']['name']}: {key} differs by {value:.3g}"
    return diffs


def spec_param_count(spec_path):
    """(snnzoo's parameter count on the meta device, the spec's expected count, key mapping problems)."""
    spec = json.loads(spec_path.read_text())
    with torch.device('meta'):
        model = snnzoo.create_model(spec['snnzoo']['name'], **spec['snnzoo']['kwargs'])
    count = sum(p.numel() for p in model.parameters())
    dropped = {e['name'] for e in spec['state_dict'] if e['name'] in spec['params_without_grad']}
    expected = spec['total_params'] - sum(e['numel'] for e in spec['state_dict'] if e['name'] in dropped)
    original = {e['name']: torch.empty(e['shape'], device='meta')
                for e in spec['state_dict'] if e['name'] not in dropped}
    mapped, own = filter_checkpoint(original, model), model.state_dict()
    problems = sorted(set(mapped) ^ set(own)) + [k for k in mapped if k in own and mapped[k].shape != own[k].shape]
    return count, expected, problems
