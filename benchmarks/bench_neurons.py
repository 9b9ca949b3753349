"""Neuron speed and saved-for-backward memory: snnzoo's torch backend vs SpikingJelly 2.0, side by side in one run.

For LIF, IF and PLIF on float32 ``[T, B, N, D]`` (default ``[4, 64, 384, 64]``): median wall time of forward +
backward, and bytes saved for backward per input element (every tensor autograd keeps, counted once per storage).
Prints a table and writes JSON (machine, versions, figures, ratios) to ``benchmarks/results/``.

    python benchmarks/bench_neurons.py [--shape 4 64 384 64] [--repeats 15] [--threads N]
"""
import argparse
import statistics
import time

import torch

from snnzoo.layers import IFNode, LIFNode, ParametricLIFNode

from _results import DEFAULT_OUT, machine, write_result


def spikingjelly_nodes():
    from spikingjelly.activation_based import neuron
    return {
        'LIF': lambda: neuron.LIFNode(tau=2.0, step_mode='m'),
        'IF': lambda: neuron.IFNode(step_mode='m'),
        'PLIF': lambda: neuron.ParametricLIFNode(init_tau=2.0, step_mode='m'),
    }


SNNZOO_NODES = {
    'LIF': lambda: LIFNode(tau=2.0, backend='torch'),
    'IF': lambda: IFNode(backend='torch'),
    'PLIF': lambda: ParametricLIFNode(init_tau=2.0, backend='torch'),
}


def reset(node):
    if hasattr(node, 'reset'):
        node.reset()


def time_fwd_bwd(node, x, grad, repeats):
    times = []
    for i in range(repeats + 3):
        reset(node)
        xi = x.detach().requires_grad_()
        t0 = time.perf_counter()
        node(xi).backward(grad)
        dt = time.perf_counter() - t0
        if i >= 3:
            times.append(dt)
    return statistics.median(times)


def saved_bytes_per_element(node, x):
    """Bytes of every distinct storage autograd saves for backward, divided by x.numel()."""
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    reset(node)
    xi = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = node(xi)
    del out
    return sum(storages.values()) / x.numel()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shape', type=int, nargs='+', default=[4, 64, 384, 64])
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(*args.shape) + 0.5
    grad = torch.randn(*args.shape)
    sj_nodes = spikingjelly_nodes()
    rows = []
    for name, make in SNNZOO_NODES.items():
        ours, ref = make(), sj_nodes[name]()
        with torch.no_grad():
            assert torch.equal(ours(x), ref(x)), f"{name}: spikes differ from SpikingJelly"
        reset(ref)
        # interleave the two so that machine noise hits both alike
        t_ours, t_sj = [], []
        for _ in range(3):
            t_ours.append(time_fwd_bwd(ours, x, grad, args.repeats // 3 + 1))
            t_sj.append(time_fwd_bwd(ref, x, grad, args.repeats // 3 + 1))
        row = dict(neuron=name, snnzoo_ms=1e3 * min(t_ours), spikingjelly_ms=1e3 * min(t_sj),
                   snnzoo_saved_bytes_per_elem=saved_bytes_per_element(ours, x),
                   spikingjelly_saved_bytes_per_elem=saved_bytes_per_element(ref, x))
        row['time_ratio'] = row['snnzoo_ms'] / row['spikingjelly_ms']
        row['saved_bytes_ratio'] = row['snnzoo_saved_bytes_per_elem'] / row['spikingjelly_saved_bytes_per_elem']
        rows.append(row)

    print(f"forward+backward, float32 {list(args.shape)}, {torch.get_num_threads()} threads")
    print(f"{'neuron':6} {'snnzoo ms':>10} {'SJ ms':>10} {'ratio':>6} {'saved B/elem':>13} {'SJ B/elem':>10}")
    for r in rows:
        print(f"{r['neuron']:6} {r['snnzoo_ms']:10.2f} {r['spikingjelly_ms']:10.2f} {r['time_ratio']:6.2f} "
              f"{r['snnzoo_saved_bytes_per_elem']:13.2f} {r['spikingjelly_saved_bytes_per_elem']:10.2f}")
    import spikingjelly
    write_result(args.out, 'bench_neurons_cpu.json', 'bench_neurons', machine(),
                 versions=dict(torch=torch.__version__, spikingjelly=getattr(spikingjelly, '__version__', '2.0.0')),
                 shape=list(args.shape), dtype='float32',
                 timing='min over 3 interleaved rounds of the median of repeats', rows=rows)


if __name__ == '__main__':
    main()
