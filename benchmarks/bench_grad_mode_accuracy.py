"""What per-step training costs in accuracy, and why: the same small network trained for the same steps, data order
and seed under BPTT and the per-step modes, with their BatchNorm statistics per step or over the sequence.

Variants (Fashion-MNIST, the ``fashion_mnist`` recipe's SEW-ResNet of 16 / 32 channels, PLIF, T=2, batch 64, AdamW
2e-3, label smoothing 0.1): BPTT with the loss on the mean output; BPTT with the per-step loss (the loss the per-step
modes use); BPTT with every BatchNorm's batch statistics taken as constants (no gradient through them); a per-step
forward that keeps the temporal gradient (one backward at the end) but normalises each step alone; SLTT and OTTT with
``bn_stats='step'`` and ``'sequence'``. Test accuracy on 2,000 test images (every 5th).

    python benchmarks/bench_grad_mode_accuracy.py [--steps 300] [--data ../shared/data/fashion-mnist]
"""
import argparse
import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import snnzoo
from snnzoo.data import build_dataset, build_transforms
from snnzoo.layers.grad_modes import _per_step_execution, forward_backward

from _results import DEFAULT_OUT, machine, write_result

CE = nn.CrossEntropyLoss(label_smoothing=0.1)


def per_step_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over T of the per-step losses, ``out`` ``[T, B, classes]``."""
    return sum(CE(o, y) for o in out) / out.shape[0]


def _constant_statistics(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A training BatchNorm whose batch mean / variance carry no gradient (running statistics updated as usual)."""
    var, mean = torch.var_mean(x.detach(), dim=[0] + list(range(2, x.dim())), unbiased=False)
    with torch.no_grad():
        F.batch_norm(x, bn.running_mean, bn.running_var, None, None, True, bn.momentum, bn.eps)
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)


def stepwise_bptt(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The per-step forward (per-step BatchNorm statistics) with the membrane kept in the graph: one backward."""
    T = model.T
    with _per_step_execution(model, None):   # the model runs one step per call (T = 1) inside
        outs = [model(x) for _ in range(T)]
        (sum(CE(o, y) for o in outs) / len(outs)).backward()


# name -> (grad mode, its options, how a step runs: forward_backward with the loss on the 'mean' output or the
# 'per_step' loss; 'constant_statistics' BatchNorms; the 'stepwise' forward above)
VARIANTS = {
    'bptt': ('bptt', {}, 'mean'),
    'bptt, per-step loss': ('bptt', {}, 'per_step'),
    'bptt, BatchNorm statistics as constants': ('bptt', {}, 'constant_statistics'),
    'per-step forward, temporal gradient kept, per-step BN': ('bptt', {}, 'stepwise'),
    'sltt, bn_stats=step': ('sltt', {'bn_stats': 'step'}, 'mean'),
    'sltt, bn_stats=sequence': ('sltt', {'bn_stats': 'sequence'}, 'mean'),
    'ottt, bn_stats=step': ('ottt', {'bn_stats': 'step'}, 'mean'),
    'ottt, bn_stats=sequence': ('ottt', {'bn_stats': 'sequence'}, 'mean'),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--data', default='../shared/data/fashion-mnist')
    p.add_argument('--out', default=DEFAULT_OUT)
    args = p.parse_args()
    torch.set_num_threads(1)
    tf = build_transforms('fashion_mnist', is_training=False)
    train = build_dataset('fashion_mnist', args.data, 'train', transform=tf)
    test = build_dataset('fashion_mnist', args.data, 'test', transform=tf)
    bs = 64
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.steps * bs]
    x_test = torch.stack([test[i][0] for i in range(0, len(test), 5)])
    y_test = torch.tensor([test[i][1] for i in range(0, len(test), 5)])
    rows = {}
    for name, (mode, opts, how) in VARIANTS.items():
        torch.manual_seed(42)
        model = snnzoo.create_model('sew_resnet_gesture', num_classes=10, in_chans=1, img_size=28, channels=[16, 32],
                                    connect_f='ADD', T=2).train()
        model.set_grad_mode(mode, **opts)
        if how == 'constant_statistics':
            for bn in model.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.forward = functools.partial(_constant_statistics, bn)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
        start = time.process_time()
        for s in range(args.steps):
            idx = order[s * bs:(s + 1) * bs].tolist()
            x = torch.stack([train[i][0] for i in idx])
            y = torch.tensor([train[i][1] for i in idx])
            opt.zero_grad()
            if how == 'stepwise':
                stepwise_bptt(model, x, y)
            else:
                forward_backward(model, x, y, per_step_loss if how == 'per_step' else CE,
                                 per_step_output=how == 'per_step')
            opt.step()
        model.eval()
        for m in model.modules():
            m.__dict__.pop('forward', None)
        with torch.no_grad():
            correct = sum(int((model(x_test[i:i + 500]).argmax(-1) == y_test[i:i + 500]).sum())
                          for i in range(0, len(x_test), 500))
        rows[name] = dict(test_acc=100.0 * correct / len(x_test), train_cpu_s=time.process_time() - start)
        print(f"{name:>56}: {rows[name]['test_acc']:.2f}% ({rows[name]['train_cpu_s']:.0f} s CPU)", flush=True)
        write_result(args.out, 'bench_grad_mode_accuracy_cpu.json', 'bench_grad_mode_accuracy', machine(),
                     steps=args.steps, batch=bs, test_images=len(x_test), rows=rows)


if __name__ == '__main__':
    main()
