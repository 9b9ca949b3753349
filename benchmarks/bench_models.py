"""Training-step time and peak memory of snnzoo's models vs SpikingJelly 2.0's zoo, side by side in one run (CPU).

Each case pairs an snnzoo model with SpikingJelly's model of the same configuration. One training step is forward +
cross-entropy + backward + SGD step on a random batch; SpikingJelly's models also need ``reset_net`` after every step.
Every (case, implementation) runs in its own subprocess: time is the median over steps after warm-up, peak memory the
growth of the process's maximum resident set over its state before the first step. Prints a table and writes JSON to
``benchmarks/results/bench_models_cpu.json``.

    python benchmarks/bench_models.py [--cases spikformer sew_resnet18] [--steps 5] [--batch 4]
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

# name -> (snnzoo model + kwargs, SpikingJelly constructor path + kwargs, input shape [C, H, W], T)
CASES = {
    'spikformer_4_384_cifar': (('spikformer_4_384_cifar', {}),
                               ('spikformer:spikformer_cifar10', {}), (3, 32, 32), 4),
    'sdt_8_384@64': (('sdt_8_384', dict(img_size=64)),
                     ('spike_driven_transformer:sdt_8_384', {}), (3, 64, 64), 4),
    'qkformer_10_384@64': (('qkformer_10_384', dict(img_size=64)),
                           ('qkformer:qkformer_10_384', {}), (3, 64, 64), 4),
    'sew_resnet18@64': (('sew_resnet18', dict(connect_f='ADD')),
                        ('sew_resnet:sew_resnet18', dict(cnf='ADD', neuron='IFNode')), (3, 64, 64), 4),
    'ms_resnet18@64': (('ms_resnet18', {}), ('ms_resnet:ms_resnet18', {}), (3, 64, 64), 4),
}


def rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def build(impl: str, case: str, num_classes: int):
    (zoo_name, zoo_kwargs), (sj_path, sj_kwargs), shape, T = CASES[case]
    if impl == 'snnzoo':
        import snnzoo
        model = snnzoo.create_model(zoo_name, num_classes=num_classes, T=T, backend='torch', **zoo_kwargs)
        return model, lambda x: model(x), lambda: None
    import importlib
    from spikingjelly.activation_based import functional
    module, fn = sj_path.split(':')
    make = getattr(importlib.import_module(f'spikingjelly.activation_based.model.{module}'), fn)
    if 'neuron' in sj_kwargs:  # the SEW original: IF neurons, ATan surrogate, detached reset
        from spikingjelly.activation_based import neuron, surrogate
        sj_kwargs = {k: v for k, v in sj_kwargs.items() if k != 'neuron'}
        sj_kwargs.update(spiking_neuron=getattr(neuron, CASES[case][1][1]['neuron']),
                         surrogate_function=surrogate.ATan(), detach_reset=True)
    try:
        model = make(T=T, num_classes=num_classes, **sj_kwargs)

        def forward(x):  # some of SpikingJelly's models return per-step logits [T, B, classes]
            out = model(x)
            return out.mean(0) if out.dim() == 3 else out
    except TypeError:  # SpikingJelly's ResNets take no T: run them multi-step on [T, B, C, H, W]
        model = make(num_classes=num_classes, **sj_kwargs)
        functional.set_step_mode(model, 'm')

        def forward(x):
            return model(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)).mean(0)
    return model, forward, lambda: functional.reset_net(model)


def run_one(impl: str, case: str, steps: int, batch: int, num_classes: int = 10) -> dict:
    torch.manual_seed(0)
    model, forward, reset = build(impl, case, num_classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    shape = CASES[case][2]
    x = torch.randn(batch, *shape)
    y = torch.randint(0, num_classes, (batch,))
    base = rss_bytes()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        reset()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(step_ms=1e3 * statistics.median(times), peak_mem_mb=peak / 2**20,
                params_m=sum(p.numel() for p in model.parameters()) / 1e6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES))
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--worker', nargs=2, metavar=('IMPL', 'CASE'), help=argparse.SUPPRESS)
    parser.add_argument('--out', default=os.environ.get('OUT') or str(Path(__file__).parent / 'results'))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(*args.worker, steps=args.steps, batch=args.batch)))
        return
    rows = []
    for case in args.cases:
        row = dict(case=case, batch=args.batch, T=CASES[case][3], input=list(CASES[case][2]))
        for impl in ('snnzoo', 'spikingjelly'):
            proc = subprocess.run([sys.executable, __file__, '--worker', impl, case, '--steps', str(args.steps),
                                   '--batch', str(args.batch)], capture_output=True, text=True)
            if proc.returncode:
                row[impl] = dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed')
            else:
                row[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
        if 'error' not in row['snnzoo'] and 'error' not in row['spikingjelly']:
            row['time_ratio'] = row['snnzoo']['step_ms'] / row['spikingjelly']['step_ms']
            row['memory_ratio'] = row['snnzoo']['peak_mem_mb'] / row['spikingjelly']['peak_mem_mb']
        rows.append(row)
        print_row(row)
    result = dict(benchmark='bench_models', date=datetime.now(timezone.utc).isoformat(timespec='seconds'),
                  machine=dict(platform=platform.platform(), cpu_count=os.cpu_count(),
                               threads=torch.get_num_threads()),
                  versions=dict(torch=torch.__version__), step='forward + CE + backward + SGD step, CPU float32',
                  rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'bench_models_cpu.json').write_text(json.dumps(result, indent=2) + '\n')
    print(f"wrote {out / 'bench_models_cpu.json'}")


def print_row(row):
    def cell(impl):
        r = row[impl]
        return r['error'][:60] if 'error' in r else f"{r['step_ms']:9.1f} ms {r['peak_mem_mb']:8.1f} MB ({r['params_m']:.2f} M)"
    ratios = (f"time x{row['time_ratio']:.2f} mem x{row['memory_ratio']:.2f}" if 'time_ratio' in row else '')
    print(f"{row['case']:24} snnzoo {cell('snnzoo')} | SpikingJelly {cell('spikingjelly')} | {ratios}", flush=True)


if __name__ == '__main__':
    main()
