"""Training memory and step time versus T for snnzoo's gradient modes and SpikingJelly 2.0, side by side in one run.

For each case (an snnzoo model and SpikingJelly's model of the same configuration, from ``bench_models.CASES``) and
each T, one process builds every variant and measures, on a fixed random batch:

- ``peak_mb``: the peak of the bytes allocated during one training step (forward + cross-entropy + backward) above
  what was allocated before it, from the profiler's allocation record in time order (exact, unlike the resident set,
  and comparable between variants of one process);
- ``kept_mb``: the bytes a training forward leaves allocated for the backward (BPTT-like variants only: the per-step
  modes never hold more than one step's graph);
- ``step_ms`` / ``step_cpu_ms``: the median wall time / process CPU time of a step, the variants' steps interleaved
  (round robin) so that the load of a shared machine hits all of them alike. With one torch thread
  (``OMP_NUM_THREADS=1``) the CPU time is the step's compute, unaffected by the time other jobs hold the core: the
  ratio to compare on a shared machine.

Variants: snnzoo ``bptt`` / ``exact`` / ``sltt`` (and ``ottt`` where it applies, i.e. not on spike x spike attention)
with per-step BatchNorm statistics (``bn_stats='step'``), ``sltt_seq`` / ``ottt_seq`` with statistics over the sequence
(``bn_stats='sequence'``, the default: one more ``no_grad`` forward over all T steps),
SpikingJelly's model plain (``sj``) and with ``memopt.optimize_memory(level=1)`` (``sj_memopt``: checkpointing of its
blocks with 1-bit spike compression; levels 2-4 search with CUDA memory statistics and need a GPU). SpikingJelly's own
SLTT / OTTT neurons are single-step nodes for its online VGG and cannot run its multi-step zoo models: not measured.

A projection to the papers' setting (224x224, batch 64 per GPU, T = 4 and 16) scales the measured kept bytes per
sample and step by the area ratio and adds weights, gradients and AdamW's two moments (16 bytes per parameter).

    python benchmarks/bench_memory.py [--cases sew_resnet18@64] [--T 1 4 8 16] [--batch 4] [--steps 3] [--no-warmup]
    python benchmarks/bench_memory.py --merge a/bench_memory_cpu.json b/bench_memory_cpu.json
"""
import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _results import DEFAULT_OUT, machine, write_result
from bench_models import CASES, build

VARIANTS = ('bptt', 'exact', 'sltt', 'sltt_seq', 'ottt', 'ottt_seq', 'sj', 'sj_memopt')
METRICS = ('peak_mb', 'kept_mb', 'step_ms', 'step_cpu_ms')
DEFAULT_CASES = ('spikformer_4_384_cifar', 'sdt_8_384@64', 'qkformer_10_384@64', 'sew_resnet18@64')
PROJECTED = {'sdt_8_384': 'sdt_8_384@64', 'meta_spikeformer_8_384': 'meta_spikeformer_8_384@64'}
CASES.setdefault('meta_spikeformer_8_384@64',   # SpikingJelly has no Meta-SpikeFormer
                 (('meta_spikeformer_8_384', dict(img_size=64)), ('', {}), (3, 64, 64), 4, 4))


def peak_allocated(fn) -> int:
    """Peak bytes allocated while ``fn()`` runs, above the allocation at its start (CPU profiler record)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def kept_after_forward(fn) -> int:
    """Bytes that ``fn()`` (a training forward) leaves allocated, its result included."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    return sum(e.self_cpu_memory_usage for e in prof.events())


def variants(case: str, T: int, names=VARIANTS, num_classes: int = 10) -> dict:
    """name -> (step(x, y), forward(x) or None): the training steps of ``names`` that apply to ``case`` at ``T``."""
    from snnzoo.layers.grad_modes import forward_backward, set_grad_mode, spike_product_modules
    zoo, forward, _ = build('snnzoo', case, num_classes, T)
    out = {}
    attention = any(isinstance(m, spike_product_modules()) for m in zoo.modules())
    for name in names:
        mode, per_step = name.split('_')[0], name.startswith(('sltt', 'ottt'))
        if name.startswith('sj') or (mode == 'ottt' and attention):
            continue
        opts = {'bn_stats': 'sequence' if name.endswith('_seq') else 'step'} if per_step else {}
        model = set_grad_mode(copy.deepcopy(zoo).train(), mode, **opts)
        out[name] = (lambda x, y, m=model: forward_backward(m, x, y, F.cross_entropy), None if per_step else model)
    if not CASES[case][1][0] or not any(name.startswith('sj') for name in names):
        return out
    from spikingjelly.activation_based import memopt
    for name in [name for name in ('sj', 'sj_memopt') if name in names]:
        model, forward, reset = build('spikingjelly', case, num_classes, T)
        model.train()
        if name == 'sj_memopt':
            x0 = torch.randn(2, *CASES[case][2])
            memopt.optimize_memory(model, _block_types(model), lambda m, f=forward, r=reset: (f(x0), r()), level=1)

        def step(x, y, f=forward, r=reset):
            F.cross_entropy(f(x), y).backward()
            r()
        out[name] = (step, forward)
    return out


def _block_types(model: torch.nn.Module) -> tuple:
    """The classes of a SpikingJelly model's blocks: elements of its ModuleLists / Sequentials with sub-modules."""
    kinds = set()
    for m in model.modules():
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)):
            kinds.update(type(c) for c in m.children() if len(list(c.children())) > 1
                         and not isinstance(c, (torch.nn.ModuleList, torch.nn.Sequential)))
    return tuple(kinds)


def measure(case: str, T: int, batch: int, steps: int, warmup: bool = True, kept_only: bool = False,
            names=VARIANTS) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(batch, *CASES[case][2]), torch.randint(0, 10, (batch,))
    runs = variants(case, T, names)
    row = {}
    for name, (step, forward) in runs.items():
        row[name] = {}
        if not kept_only:
            if warmup:                                                 # else the peak includes allocating .grad
                step(x, y)
            row[name]['peak_mb'] = peak_allocated(lambda: step(x, y)) / 2 ** 20
        if forward is not None:
            row[name]['kept_mb'] = kept_after_forward(lambda: forward(x)) / 2 ** 20
    if kept_only:
        return {name: v for name, v in row.items() if v}
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, (step, _) in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step(x, y)
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    for name in runs:
        row[name]['step_ms'], row[name]['step_cpu_ms'] = (1e3 * statistics.median(t) for t in zip(*times[name]))
    return row


def project(rows: list, batch: int) -> dict:
    """GPU memory (GiB) per mode at 224x224, batch 64, T = 4 / 16: 16 bytes per parameter (weights, gradients, AdamW's
    two moments) plus the activations a training forward keeps, from each case's bytes per sample and step (BPTT, exact:
    at the largest measured T; SLTT: one step's graph, i.e. BPTT's at T = 1) scaled by the area ratio."""
    import snnzoo
    out = {}
    for name, case in PROJECTED.items():
        measured = {r['T']: r for r in rows if r['case'] == case}
        if 1 not in measured or len(measured) < 2 or not all('kept_mb' in measured[1].get(m, {}) for m in
                                                              ('bptt', 'exact')):
            continue
        T_ref = max(measured)
        params = sum(p.numel() for p in snnzoo.create_model(name).parameters())
        area = (224 / CASES[case][2][1]) ** 2
        per_step = {mode: measured[T_ref][mode]['kept_mb'] * 2 ** 20 / (batch * T_ref) for mode in ('bptt', 'exact')}
        per_step['sltt'] = measured[1]['bptt']['kept_mb'] * 2 ** 20 / batch
        gib = {mode: {f'T{T}': (16 * params + b * area * 64 * (1 if mode == 'sltt' else T)) / 2 ** 30 for T in (4, 16)}
               for mode, b in per_step.items()}
        out[name] = dict(params_m=params / 1e6, from_case=case, from_T=T_ref, gib=gib)
    return out


def plot(rows: list, path) -> None:
    """Peak memory of a training step (else the bytes kept after forward) versus T, a panel per case, a line per
    variant."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cases = list(dict.fromkeys(r['case'] for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.4), squeeze=False)
    for ax, case in zip(axes[0], cases):
        mine = sorted((r for r in rows if r['case'] == case), key=lambda r: r['T'])
        metric = 'peak_mb' if all('peak_mb' in v for r in mine for v in r.values() if isinstance(v, dict)) \
            else 'kept_mb'
        for i, name in enumerate(VARIANTS):
            if isinstance(mine[0].get(name), dict) and metric in mine[0][name]:
                ax.plot([r['T'] for r in mine], [r[name][metric] for r in mine], marker='o', label=name, color=f'C{i}')
        ax.legend(fontsize=8)
        ax.set(title=f"{case} (batch {mine[0]['batch']})", xlabel='T',
               ylabel='peak MB of a training step' if metric == 'peak_mb' else 'MB kept after a training forward')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', nargs='+', default=list(DEFAULT_CASES), choices=list(CASES), metavar='CASE')
    parser.add_argument('--T', nargs='+', type=int, default=[1, 4, 8, 16])
    parser.add_argument('--batch', type=int, default=1, help='images per step (results of batch b > 1 go to '
                        'bench_memory*_b<b>_cpu.json)')
    parser.add_argument('--steps', type=int, default=3, help='timed steps per variant (after one warm-up)')
    parser.add_argument('--no-warmup', action='store_true', help='measure the first step (cheaper; the peak then '
                        'includes allocating the gradients, the same bytes for every variant)')
    parser.add_argument('--kept-only', action='store_true', help='only the bytes kept after a training forward '
                        '(no step, no timing: the cheap way to see memory versus T)')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS,
                        help='measure these only (results then go to bench_memory*_<variants>_cpu.json)')
    parser.add_argument('--merge', nargs='+', metavar='JSON', help='combine the rows of earlier runs (e.g. one '
                        'process per case run side by side) instead of measuring; the batch must match')
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args()
    rows = []
    for path in args.merge or []:
        merged = json.loads(Path(path).read_text())
        rows += merged['rows']
        args.steps, args.no_warmup = merged['steps'], not merged.get('warmup', True)
    for case in [] if args.merge else args.cases:
        for T in args.T:
            row = dict(case=case, T=T, batch=args.batch, **measure(case, T, args.batch, args.steps, not args.no_warmup,
                                                                 args.kept_only, args.variants))
            rows.append(row)
            print(f"{case:24} T={T:2} " + ' | '.join(
                f"{k} " + ' '.join(f"{m} {v[m]:.1f}" for m in METRICS if m in v)
                for k, v in row.items() if isinstance(v, dict)), flush=True)
    for row in rows:
        if row['batch'] != rows[0]['batch']:
            raise ValueError(f"rows of batch {row['batch']} and {rows[0]['batch']}: merge runs of one batch size")
    projection = project(rows, rows[0]['batch'])
    for name, p in projection.items():
        print(name, {mode: {k: round(v, 1) for k, v in g.items()} for mode, g in p['gib'].items()}, 'GiB')
    stem = 'bench_memory' + ('' if any('peak_mb' in v for r in rows for v in r.values() if isinstance(v, dict))
                             else '_kept') + ('' if rows[0]['batch'] == 1 else f"_b{rows[0]['batch']}") \
        + ('' if args.merge or set(args.variants) == set(VARIANTS) else '_' + '_'.join(args.variants)) + '_cpu'
    Path(args.out).mkdir(parents=True, exist_ok=True)
    plot(rows, Path(args.out) / f'{stem}.png')
    write_result(args.out, f'{stem}.json', 'bench_memory', machine(), versions=dict(torch=torch.__version__),
                 step='forward + CE + backward (no optimizer step), CPU float32', steps=args.steps,
                 warmup=not args.no_warmup, rows=rows,
                 projection_224_batch64=projection)


if __name__ == '__main__':
    main()
