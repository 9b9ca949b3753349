"""Training-step time and peak memory of snnzoo's models vs SpikingJelly 2.0's zoo, side by side in one run (CPU).

Each case pairs an snnzoo model with SpikingJelly's model of the same configuration. One training step is forward +
cross-entropy + backward + SGD step on a random batch; SpikingJelly's models also need ``reset_net`` after every step.

- Time: a process builds both models and runs their steps alternately (snnzoo, SpikingJelly, snnzoo, ...), so drifts
  of a shared machine hit both alike; ``--processes`` such processes run one after another per case, since a process
  as a whole can run a few percent slow. The figure is the median of all steps after warm-up; the spread is the
  quartiles of the per-round ratios (each snnzoo step over the SpikingJelly step next to it) and the range of the
  per-process ratios of medians. Each process also times a *neuron-free ceiling*: the snnzoo model with every neuron
  replaced by a bare threshold ``x >= V_th`` (one op, identity gradient). Its ratio to SpikingJelly is the best any
  neuron implementation could reach with the same convolutions, BatchNorms and pooling.
  The step is also split into its forward (with the loss) and the rest (backward and SGD step), timed alike.
- Peak memory: the growth of a process's maximum resident set over its state before the first step, one process per
  implementation, the median of ``--processes`` of them (a single one varies by up to 20%).
- Kept after forward (snnzoo only): the bytes a training forward leaves allocated for backward (the profiler's
  allocation record; exact, unlike the resident set), with saved spikes stored and rebuilt from H
  (``model.set_recompute_spikes``).

Prints a table and writes JSON to ``benchmarks/results/bench_models_cpu.json``.

    python benchmarks/bench_models.py [--cases spikformer_4_384_cifar sew_resnet18@224] [--steps 8] [--processes 3]
"""
import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch

from _results import DEFAULT_OUT, machine, write_result

# name -> (snnzoo model + kwargs, SpikingJelly constructor + kwargs, input [C, H, W], T, batch)
CASES = {
    'spikformer_4_384_cifar': (('spikformer_4_384_cifar', {}),
                               ('spikformer:spikformer_cifar10', {}), (3, 32, 32), 4, 4),
    # SpikingJelly has no Spikingformer: its closest zoo model is the Spikformer of the same dimensions
    'spikingformer_4_384_cifar': (('spikingformer_4_384_cifar', {}),
                                  ('spikformer:spikformer_cifar10', {}), (3, 32, 32), 4, 4),
    'sdt_8_384@64': (('sdt_8_384', dict(img_size=64)),
                     ('spike_driven_transformer:sdt_8_384', {}), (3, 64, 64), 4, 4),
    'sdt_8_384@224': (('sdt_8_384', {}), ('spike_driven_transformer:sdt_8_384', {}), (3, 224, 224), 4, 2),
    'qkformer_10_384@64': (('qkformer_10_384', dict(img_size=64)),
                           ('qkformer:qkformer_10_384', {}), (3, 64, 64), 4, 4),
    'qkformer_10_384@224': (('qkformer_10_384', {}), ('qkformer:qkformer_10_384', {}), (3, 224, 224), 4, 2),
    'sew_resnet18@64': (('sew_resnet18', dict(connect_f='ADD')),
                        ('sew_resnet:sew_resnet18', dict(cnf='ADD', neuron='IFNode')), (3, 64, 64), 4, 4),
    'sew_resnet18@224': (('sew_resnet18', dict(connect_f='ADD')),
                         ('sew_resnet:sew_resnet18', dict(cnf='ADD', neuron='IFNode')), (3, 224, 224), 4, 2),
    'ms_resnet18@64': (('ms_resnet18', {}), ('ms_resnet:ms_resnet18', {}), (3, 64, 64), 4, 4),
    'ms_resnet18@224': (('ms_resnet18', {}), ('ms_resnet:ms_resnet18', {}), (3, 224, 224), 4, 2),
}
IMPLS = ('snnzoo', 'spikingjelly')


def rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def build(impl: str, case: str, num_classes: int, T: Optional[int] = None):
    """``(model, forward(x) -> logits, reset())`` of one implementation (at the case's T unless ``T`` is given)."""
    (zoo_name, zoo_kwargs), (sj_path, sj_kwargs), shape, case_T, _ = CASES[case]
    T = T or case_T
    if impl == 'snnzoo':
        import snnzoo
        model = snnzoo.create_model(zoo_name, num_classes=num_classes, T=T, backend='torch', **zoo_kwargs)
        return model, model, lambda: None
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


class _BareThreshold(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, threshold):
        return (x >= threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def without_neurons(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an snnzoo model whose every neuron is the bare threshold ``x >= V_th`` with identity gradient."""
    from snnzoo.layers.neuron import BaseNode
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, BaseNode):
            m.forward = lambda x, th=m.v_threshold: _BareThreshold.apply(x, th)
    return model


class Trainer:
    """One implementation's training step on a fixed random batch."""

    def __init__(self, model, forward, reset, case: str, num_classes: int = 10):
        torch.manual_seed(0)
        self.model, self.forward, self.reset = model.train(), forward, reset
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        self.x = torch.randn(CASES[case][4], *CASES[case][2])
        self.y = torch.randint(0, num_classes, (CASES[case][4],))

    def step(self) -> tuple:
        """Seconds of the forward (with the loss) and of the rest (backward, SGD step, reset)."""
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.forward(self.x), self.y)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.reset()
        return t1 - t0, time.perf_counter() - t1


def time_case(case: str, steps: int, warmup: int = 2) -> dict:
    """Step times (ms) of snnzoo, SpikingJelly and the neuron-free ceiling, their steps interleaved; also per phase
    (``<name>_forward``: forward and loss; ``<name>_backward``: backward and SGD step)."""
    zoo = build('snnzoo', case, 10)
    trainers = {'snnzoo': Trainer(*zoo, case), 'spikingjelly': Trainer(*build('spikingjelly', case, 10), case)}
    ceiling = without_neurons(zoo[0])
    trainers['neuron_free_ceiling'] = Trainer(ceiling, ceiling, lambda: None, case)
    times = {name + phase: [] for name in trainers for phase in ('', '_forward', '_backward')}
    for i in range(warmup + steps):
        for name, trainer in trainers.items():
            forward, backward = trainer.step()
            if i >= warmup:
                for phase, elapsed in (('', forward + backward), ('_forward', forward), ('_backward', backward)):
                    times[name + phase].append(elapsed)
    return {name: [1e3 * t for t in ts] for name, ts in times.items()}


def summarise_times(runs: list) -> dict:
    """Pooled median step (ms) per implementation, quartiles of the paired per-round snnzoo / SpikingJelly ratios and
    the per-process ratios of medians, from the step times of several :func:`time_case` processes."""
    pooled = {name: [t for run in runs for t in run[name]] for name in runs[0]}
    paired = [a / b for a, b in zip(pooled['snnzoo'], pooled['spikingjelly'])]
    return dict({name: statistics.median(ts) for name, ts in pooled.items()},
                time_ratio_quartiles=statistics.quantiles(paired, n=4),
                time_ratio_per_process=[statistics.median(r['snnzoo']) / statistics.median(r['spikingjelly'])
                                        for r in runs])


def memory_case(impl: str, case: str, steps: int = 10) -> dict:
    trainer = Trainer(*build(impl, case, 10), case)
    base = rss_bytes()
    for _ in range(steps):
        trainer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(peak_mem_mb=peak / 2**20, params_m=sum(p.numel() for p in trainer.model.parameters()) / 1e6)


def kept_after_forward(case: str) -> dict:
    """MB that one snnzoo training forward leaves allocated (saved for backward, and the logits), with the saved
    spikes stored and with them rebuilt from the neurons' H."""
    from torch.profiler import ProfilerActivity, profile
    model, forward, reset = build('snnzoo', case, 10)
    trainer = Trainer(model, forward, reset, case)
    trainer.step()
    kept = {}
    for name, enable in (('spikes_stored', False), ('spikes_rebuilt', True)):
        model.set_recompute_spikes(enable)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            logits = forward(trainer.x)
        kept[name] = sum(event.self_cpu_memory_usage for event in prof.key_averages()) / 2**20
        del logits
    return kept


def median_memory(runs: list) -> dict:
    """The first error of several :func:`memory_case` processes, else their median peak."""
    errors = [run for run in runs if 'error' in run]
    if errors:
        return errors[0]
    return dict(runs[0], peak_mem_mb=statistics.median(run['peak_mem_mb'] for run in runs))


def run_worker(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, '--worker', *args], capture_output=True, text=True)
    if proc.returncode:
        return dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES), metavar='CASE')
    parser.add_argument('--steps', type=int, default=8, help='timed steps per implementation and process')
    parser.add_argument('--processes', type=int, default=3, help='timing processes per case')
    parser.add_argument('--worker', nargs='+', help=argparse.SUPPRESS)
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        work = {'time': lambda: time_case(rest[0], args.steps), 'mem': lambda: memory_case(*rest),
                'kept': lambda: kept_after_forward(rest[0])}[kind]
        print(json.dumps(work()))
        return
    rows = []
    for case in args.cases:
        _, _, shape, T, batch = CASES[case]
        row = dict(case=case, batch=batch, T=T, input=list(shape))
        runs = [run_worker('time', case, '--steps', str(args.steps)) for _ in range(args.processes)]
        errors = [run['error'] for run in runs if 'error' in run]
        timing = dict(error=errors[0]) if errors else summarise_times(runs)
        for impl in IMPLS:
            row[impl] = median_memory([run_worker('mem', impl, case) for _ in range(args.processes)])
            if impl == 'snnzoo':
                row[impl]['kept_after_forward_mb'] = run_worker('kept', case)
            if 'error' in timing:
                row[impl]['error'] = timing['error']
            else:
                row[impl].update(step_ms=timing[impl], forward_ms=timing[impl + '_forward'],
                                 backward_ms=timing[impl + '_backward'])
        if not any('error' in row[impl] for impl in IMPLS):
            row['neuron_free_ceiling_ms'] = timing['neuron_free_ceiling']
            row['time_ratio'] = row['snnzoo']['step_ms'] / row['spikingjelly']['step_ms']
            row['time_ratio_quartiles'] = timing['time_ratio_quartiles']
            row['time_ratio_per_process'] = timing['time_ratio_per_process']
            for phase in ('forward', 'backward'):
                row[f'{phase}_time_ratio'] = row['snnzoo'][f'{phase}_ms'] / row['spikingjelly'][f'{phase}_ms']
            row['ceiling_time_ratio'] = timing['neuron_free_ceiling'] / row['spikingjelly']['step_ms']
            row['memory_ratio'] = row['snnzoo']['peak_mem_mb'] / row['spikingjelly']['peak_mem_mb']
        rows.append(row)
        print_row(row)
    write_result(args.out, 'bench_models_cpu.json', 'bench_models', machine(),
                 versions=dict(torch=torch.__version__), steps=args.steps, processes=args.processes,
                 step='forward + CE + backward + SGD step, CPU float32', rows=rows)


def print_row(row):
    def cell(impl):
        r = row[impl]
        return r['error'][:60] if 'error' in r else f"{r['step_ms']:7.1f} ms {r['peak_mem_mb']:7.1f} MB"
    ratios = ''
    if 'time_ratio' in row:
        q1, _, q3 = row['time_ratio_quartiles']
        per_process = row['time_ratio_per_process']
        ratios = (f"time x{row['time_ratio']:.2f} (rounds x{q1:.2f}-{q3:.2f}, processes x{min(per_process):.2f}-"
                  f"{max(per_process):.2f}; forward x{row['forward_time_ratio']:.2f}, backward "
                  f"x{row['backward_time_ratio']:.2f}; neuron-free ceiling x{row['ceiling_time_ratio']:.2f}) "
                  f"mem x{row['memory_ratio']:.2f}")
    kept = row['snnzoo'].get('kept_after_forward_mb', {})
    if 'spikes_rebuilt' in kept:
        ratios += f" | kept after forward {kept['spikes_stored']:.0f} MB ({kept['spikes_rebuilt']:.0f} MB rebuilt)"
    print(f"{row['case']:24} snnzoo {cell('snnzoo')} | SpikingJelly {cell('spikingjelly')} | {ratios}", flush=True)


if __name__ == '__main__':
    main()
