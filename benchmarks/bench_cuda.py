"""Fused CuPy LIF kernels on a GPU: time, peak memory and bandwidth of forward + backward, side by side in one run.

LIF (tau=2, detach_reset=True, sigmoid surrogate; the Spikformer neuron) on ``[T, B, N, D]`` (default
``[T, 32, 384, 1024]``, T in {4, 16}) in float32, float16 and bfloat16, for:
  snnzoo backend='cupy' (the fused kernels), snnzoo backend='torch', and SpikingJelly 2.0's fastest GPU
  implementation (each of its native 'cuda' and 'triton' LIF implementations that loads, in its own process, since
  SpikingJelly picks it from $SJ_LIF_CUDA_IMPLEMENTATION at import; the fastest is reported).
Figures: median forward+backward and forward-only (inference) time, peak memory above the inputs, bytes saved for
backward per element, and the kernels' bandwidth: the bytes the design must move (forward reads X and writes S and
H, backward reads H and dL/dS and writes dL/dX: 6 values of the dtype per element) divided by the time, as a
fraction of a device-to-device copy's bandwidth measured in the same run. Targets: >= 1.5x SpikingJelly's fastest,
>= 80% of copy bandwidth, no more saved memory than SpikingJelly.

    python benchmarks/bench_cuda.py [--T 4 16] [--shape 32 384 1024] [--dtypes float32 float16 bfloat16]

Prints a table and writes JSON (device, versions, figures, ratios) to benchmarks/results/ (or $OUT when set).
Needs a CUDA GPU and CuPy; without them it says so and exits.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from _results import DEFAULT_OUT, machine, write_result

SJ_IMPLEMENTATIONS = ('cuda', 'triton')
DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}
VALUES_MOVED = 6   # per element: forward X, S, H; backward H, dL/dS, dL/dX


def cuda_time_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(make_node, shape, dtype, repeats: int) -> dict:
    """Median fwd+bwd and fwd-only ms, peak bytes above the inputs and bytes saved for backward per element."""
    torch.manual_seed(0)
    x = (torch.randn(shape, device='cuda') + 0.5).to(dtype).requires_grad_()
    grad = torch.randn(shape, device='cuda').to(dtype)
    node = make_node()

    def reset():
        if hasattr(node, 'reset'):
            node.reset()

    def fwd_bwd():
        reset()
        x.grad = None
        node(x).backward(grad)

    def fwd():
        reset()
        with torch.no_grad():
            node(x)

    fwd_bwd_ms, fwd_ms = cuda_time_ms(fwd_bwd, repeats), cuda_time_ms(fwd, repeats)
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    reset()
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        spikes = node(x)
    spikes.backward(grad)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return dict(fwd_bwd_ms=fwd_bwd_ms, fwd_ms=fwd_ms, peak_bytes_per_elem=peak / x.numel(),
                saved_bytes_per_elem=sum(storages.values()) / x.numel())


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device='cuda')
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), repeats)
    return 2 * nbytes / (ms * 1e-3)


def sj_worker(implementation: str, configs: list, repeats: int) -> None:
    """Runs in a subprocess with SJ_LIF_CUDA_IMPLEMENTATION set; prints one JSON line per config."""
    from spikingjelly.activation_based import neuron

    for T, shape, dtype_name in configs:
        try:
            row = measure(lambda: neuron.LIFNode(tau=2.0, detach_reset=True, step_mode='m'), shape,
                          DTYPES[dtype_name], repeats)
        except Exception as error:  # an implementation that does not load or run here
            row = dict(error=f"{type(error).__name__}: {error}"[:300])
        print(json.dumps(dict(T=T, dtype=dtype_name, implementation=implementation, **row)), flush=True)


def spikingjelly(configs: list, repeats: int) -> dict:
    """(T, dtype) -> best row over SpikingJelly's GPU implementations, each measured in its own process."""
    best = {}
    for implementation in SJ_IMPLEMENTATIONS:
        env = dict(os.environ, SJ_LIF_CUDA_IMPLEMENTATION=implementation)
        proc = subprocess.run([sys.executable, __file__, '--sj-worker', implementation, '--repeats', str(repeats),
                               '--configs', json.dumps(configs)], capture_output=True, text=True, env=env)
        for line in proc.stdout.splitlines():
            if not line.startswith('{'):
                continue
            row = json.loads(line)
            key = (row['T'], row['dtype'])
            if 'error' in row:
                best.setdefault(key, row)
            elif 'error' in best.get(key, {'error': ''}) or row['fwd_bwd_ms'] < best[key]['fwd_bwd_ms']:
                best[key] = row
        if proc.returncode != 0:
            print(f"SpikingJelly {implementation}: worker failed: {proc.stderr[-500:]}", file=sys.stderr)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--T', type=int, nargs='+', default=[4, 16])
    parser.add_argument('--shape', type=int, nargs='+', default=[32, 384, 1024], help='[B, N, D] after T')
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--out', default=DEFAULT_OUT)
    parser.add_argument('--sj-worker', help=argparse.SUPPRESS)
    parser.add_argument('--configs', help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("bench_cuda.py needs a CUDA GPU (torch.cuda.is_available() is False here); nothing to measure.")
        return
    if args.sj_worker:
        sj_worker(args.sj_worker, [(T, tuple(s), d) for T, s, d in json.loads(args.configs)], args.repeats)
        return
    import snnzoo.cuda
    if not snnzoo.cuda.is_available():
        print("bench_cuda.py needs CuPy for the fused kernels: pip install 'snnzoo[cuda]'.")
        return
    problem = snnzoo.cuda.unusable(torch.device('cuda', torch.cuda.current_device()))
    if problem:
        print(f"bench_cuda.py: {problem}")
        return
    from snnzoo.layers import LIFNode

    configs = [(T, [T, *args.shape], d) for T in args.T for d in args.dtypes]
    largest = max(T for T in args.T) * torch.Size(args.shape).numel() * 4
    copy_bw = copy_bandwidth(largest, args.repeats)
    sj = spikingjelly(configs, args.repeats)
    rows = []
    for T, shape, dtype_name in configs:
        dtype = DTYPES[dtype_name]
        with torch.no_grad():
            x = (torch.randn(shape, device='cuda') + 0.5).to(dtype)
            spikes_match = torch.equal(LIFNode(tau=2.0, detach_reset=True, backend='cupy')(x),
                                       LIFNode(tau=2.0, detach_reset=True, backend='torch')(x))
            del x
        cupy = measure(lambda: LIFNode(tau=2.0, detach_reset=True, backend='cupy'), shape, dtype, args.repeats)
        torch_row = measure(lambda: LIFNode(tau=2.0, detach_reset=True, backend='torch'), shape, dtype, args.repeats)
        numel = torch.Size(shape).numel()
        bandwidth = VALUES_MOVED * dtype.itemsize * numel / (cupy['fwd_bwd_ms'] * 1e-3)
        ref = sj.get((T, dtype_name), {'error': 'not measured'})
        row = dict(T=T, shape=shape, dtype=dtype_name, cupy=cupy, torch=torch_row, spikingjelly=ref,
                   cupy_bandwidth_GBps=bandwidth / 1e9, cupy_fraction_of_copy_bandwidth=bandwidth / copy_bw,
                   speedup_vs_torch=torch_row['fwd_bwd_ms'] / cupy['fwd_bwd_ms'], spikes_match_torch=spikes_match)
        if 'error' not in ref:
            row['speedup_vs_spikingjelly'] = ref['fwd_bwd_ms'] / cupy['fwd_bwd_ms']
            row['saved_bytes_ratio_vs_spikingjelly'] = cupy['saved_bytes_per_elem'] / ref['saved_bytes_per_elem']
        rows.append(row)

    device = torch.cuda.get_device_name()
    print(f"LIF forward+backward on {device}; copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    print(f"{'T':>3} {'dtype':9} {'cupy ms':>8} {'torch ms':>9} {'SJ ms':>8} {'SJ impl':>8} {'vs SJ':>6} "
          f"{'vs torch':>8} {'% copy BW':>9} {'saved B/el':>10} {'SJ B/el':>8} {'peak B/el':>9}")
    for r in rows:
        sj_row = r['spikingjelly']
        sj_ms = f"{sj_row['fwd_bwd_ms']:8.2f}" if 'error' not in sj_row else f"{'n/a':>8}"
        print(f"{r['T']:3d} {r['dtype']:9} {r['cupy']['fwd_bwd_ms']:8.2f} {r['torch']['fwd_bwd_ms']:9.2f} {sj_ms} "
              f"{sj_row.get('implementation', '-'):>8} {r.get('speedup_vs_spikingjelly', float('nan')):6.2f} "
              f"{r['speedup_vs_torch']:8.2f} {100 * r['cupy_fraction_of_copy_bandwidth']:9.1f} "
              f"{r['cupy']['saved_bytes_per_elem']:10.2f} {sj_row.get('saved_bytes_per_elem', float('nan')):8.2f} "
              f"{r['cupy']['peak_bytes_per_elem']:9.2f}")
    import cupy
    versions = dict(torch=torch.__version__, cuda=torch.version.cuda, cupy=cupy.__version__)
    from importlib.metadata import PackageNotFoundError, version
    try:
        versions['spikingjelly'] = version('spikingjelly')
    except PackageNotFoundError:
        pass
    slug = ''.join(c if c.isalnum() else '_' for c in device.lower()).strip('_')
    write_result(args.out, f'bench_cuda_{slug}.json', 'bench_cuda',
                 machine(device=device, capability=list(torch.cuda.get_device_capability())),
                 versions=versions, neuron='LIFNode(tau=2.0, detach_reset=True), sigmoid surrogate',
                 timing=f'median of {args.repeats} CUDA-event-timed repeats after 3 warm-ups',
                 copy_bandwidth_GBps=copy_bw / 1e9, values_moved_per_elem=VALUES_MOVED, rows=rows)


if __name__ == '__main__':
    main()
