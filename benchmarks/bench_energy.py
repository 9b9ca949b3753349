"""Cost of energy profiling: ``snnzoo.energy.profile(model, x)`` against the plain ``model(x)`` forward pass.

Both run in eval mode without autograd on the same input; the target is a ratio of at most 3. Models are registered
names (default: a spiking Transformer and a spiking ResNet of the zoo); a name that is not registered falls back to a
small spiking conv net built from ``snnzoo.layers`` (marked ``fallback`` in the output). Prints a table and writes
JSON (machine, versions, times, ratios) to ``benchmarks/results/bench_energy_<device>.json``.

    python benchmarks/bench_energy.py [--models spikformer_4_384_cifar sew_resnet18] [--batch-size 8]
                                      [--device cpu|cuda] [--repeats 5] [--threads N]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

import snnzoo
from snnzoo.energy import profile
from snnzoo.layers import LIFNode, MultiStep, to_time_major

from _results import DEFAULT_OUT, machine, write_result


class SmallSpikingConvNet(nn.Module):
    """Fallback model: three conv-BN-LIF stages with a spike-driven classifier, ``[B, 3, 32, 32] -> [B, 10]``."""

    def __init__(self, T: int = 4, width: int = 64):
        super().__init__()
        self.T = T
        chans = [3, width, 2 * width, 4 * width]
        self.stages = nn.ModuleList(
            nn.ModuleList([MultiStep(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                     nn.MaxPool2d(2)), LIFNode(detach_reset=True)])
            for cin, cout in zip(chans[:-1], chans[1:]))
        self.head = nn.Linear(chans[-1], 10)

    def forward(self, x):
        x = to_time_major(x, self.T, 3, name='SmallSpikingConvNet')
        for conv, lif in self.stages:
            x = lif(conv(x))
        return self.head(x.flatten(3).mean(-1)).mean(0)


def build(name: str, device: str):
    if name in snnzoo.list_models():
        model = snnzoo.create_model(name)
        input_size = model.pretrained_cfg['input_size']
        fallback = False
    else:
        model, input_size, fallback = SmallSpikingConvNet(), (3, 32, 32), True
    return model.to(device).eval(), input_size, fallback


def sync(device: str):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['spikformer_4_384_cifar', 'sew_resnet18'])
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        model, input_size, fallback = build(name, args.device)
        x = torch.randn(args.batch_size, *input_size, device=args.device)

        def plain():
            with torch.no_grad():
                model(x)

        report = profile(model, x)          # warm-up of both paths
        plain()
        t_plain, t_profile = [], []
        for _ in range(args.repeats):       # interleaved so that machine noise hits both alike
            t_plain.append(timed(plain, args.device))
            t_profile.append(timed(lambda: profile(model, x), args.device))
        row = dict(model=name if not fallback else f'{name} (fallback: SmallSpikingConvNet)', fallback=fallback,
                   input_shape=[args.batch_size, *input_size], plain_ms=1e3 * statistics.median(t_plain),
                   profile_ms=1e3 * statistics.median(t_profile), counted_ops=len(report.rows),
                   gflops_per_image=report.totals['flops'] / 1e9,
                   energy_mj_paper=report.energy_mj('paper'), energy_mj_strict=report.energy_mj('strict'))
        row['ratio'] = row['profile_ms'] / row['plain_ms']
        rows.append(row)

    print(f"profile(model, x) vs model(x), eval, no grad, {args.device}, {torch.get_num_threads()} threads")
    print(f"{'model':40} {'input':>20} {'plain ms':>10} {'profile ms':>11} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:40} {'x'.join(map(str, r['input_shape'])):>20} {r['plain_ms']:10.1f} "
              f"{r['profile_ms']:11.1f} {r['ratio']:6.2f}")
    device = 'cuda' if args.device.startswith('cuda') else 'cpu'
    write_result(args.out, f'bench_energy_{device}.json', 'bench_energy',
                 machine(gpu=torch.cuda.get_device_name() if device == 'cuda' else None),
                 versions=dict(torch=torch.__version__, snnzoo=snnzoo.__version__), device=args.device,
                 timing=f'median of {args.repeats} interleaved runs after one warm-up', target='ratio <= 3',
                 rows=rows)


if __name__ == '__main__':
    main()
