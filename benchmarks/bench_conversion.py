"""ANN-to-SNN conversion, snnzoo against SpikingJelly 2.0's ``ann2snn``, side by side in one run on the same ANN and
the same calibration batches: test accuracy versus T, conversion and inference time, energy per image.

The ANN is a trained run of ``experiment=qcfs_cifar10`` (QCFS activations). snnzoo converts it with ``'qcfs'``
(threshold lambda, membrane starting at half of it; plain and with signed neurons) and ``'exact'``
(accumulate-then-fire, at T = L). Threshold balancing needs ReLUs (SpikingJelly's converter replaces ``nn.ReLU``
only), so both libraries balance the same copy of the ANN whose QCFS activations are replaced by ReLU: snnzoo
``'max'`` / ``'percentile'`` (99.9, layer-wise; membrane starting at half the threshold) against SpikingJelly's
``RateCodingRecipe`` modes ``'max'`` / ``'99.9%'`` (its defaults: momentum-averaged batch statistics, membrane
starting at 0), and snnzoo's max with signed neurons. One pass at the largest T gives every smaller T for both
(their IF networks are causal; the QCFS rows stop at ``--qcfs-max-T``). The CPU may be shared with other jobs: the
methods of the two libraries alternate, so that their time ratios stay meaningful. The JSON is rewritten after every
row, so an interrupted run keeps the rows it finished.

    python benchmarks/bench_conversion.py --run outputs/qcfs_cifar10 [--T 1 2 4 8 16 32 64] [--limit N]
                                          [--calib-images 512] [--threads N]
"""
import argparse
import copy
import dataclasses
import time

import torch
import torch.nn as nn

from snnzoo.conversion import convert
from snnzoo.energy import profile
from snnzoo.layers import QCFS
from snnzoo.train.ann2snn import calibration_images, evenly_spaced
from snnzoo.train.checkpoint import load_trained_model

from _results import DEFAULT_OUT, machine, write_result


def relu_copy(ann: nn.Module) -> nn.Module:
    """``ann`` with every QCFS replaced by ``nn.ReLU`` (what threshold balancing converts)."""
    ann = copy.deepcopy(ann)
    for m in list(ann.modules()):
        for child, sub in list(m.named_children()):
            if isinstance(sub, QCFS):
                setattr(m, child, nn.ReLU())
    return ann


@torch.no_grad()
def ann_accuracy(ann, X, Y, batch) -> float:
    return 100.0 * sum(int((ann(X[i:i + batch]).argmax(-1) == Y[i:i + batch]).sum())
                       for i in range(0, len(X), batch)) / len(X)


@torch.no_grad()
def snnzoo_accuracy(snn, X, Y, Ts, batch) -> dict:
    snn.set_T(max(Ts))
    idx, correct = torch.tensor([t - 1 for t in Ts]), torch.zeros(len(Ts), dtype=torch.long)
    for i in range(0, len(X), batch):
        correct += (snn.forward_running(X[i:i + batch])[idx].argmax(-1) == Y[i:i + batch]).sum(1)
    return {t: 100.0 * c / len(X) for t, c in zip(Ts, correct.tolist())}


@torch.no_grad()
def spikingjelly_accuracy(snn, X, Y, Ts, batch) -> dict:
    """SpikingJelly's evaluation loop: single-step network, reset_net per batch, outputs summed over steps."""
    from spikingjelly.activation_based import functional
    correct = {t: 0 for t in Ts}
    for i in range(0, len(X), batch):
        x, y = X[i:i + batch], Y[i:i + batch]
        functional.reset_net(snn)
        out = 0
        for t in range(1, max(Ts) + 1):
            out = out + snn(x)
            if t in correct:
                correct[t] += int((out.argmax(-1) == y).sum())
    return {t: 100.0 * c / len(X) for t, c in correct.items()}


def spikingjelly_convert(ann, calib, mode):
    from spikingjelly.activation_based import ann2snn
    recipe = ann2snn.RateCodingRecipe(dataloader=[(x, None) for x in calib], mode=mode)
    return ann2snn.Converter(recipe=recipe, device='cpu').convert(copy.deepcopy(ann)).eval()


def energy(model, x) -> dict:
    r = profile(model, x)
    return {'paper_mj': r.energy_mj('paper'), 'strict_mj': r.energy_mj('strict'), 'flops': r.totals['flops'],
            'macs': r.totals['macs'], 'acs': r.totals['acs']}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, row in result['rows'].items():
        if len(row['acc']) > 1:
            ts = sorted(int(t) for t in row['acc'])
            ax.plot(ts, [row['acc'][t] for t in ts], marker='o', ls='--' if name.startswith('spikingjelly') else '-',
                    label=name)
    ax.axhline(result['ann_acc_qcfs'], color='k', lw=0.8, label='QCFS ANN')
    ax.axhline(result['ann_acc_relu'], color='gray', lw=0.8, ls=':', label='ReLU copy (ANN)')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('time steps T')
    ax.set_ylabel(f"CIFAR-10 test accuracy (%), {result['n_test']} images")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--run', required=True, help='the trained QCFS ANN (run folder or exported model)')
    p.add_argument('--T', nargs='+', type=int, default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument('--qcfs-max-T', type=int, default=16, help="the QCFS rows' largest T (they converge by T = 2L)")
    p.add_argument('--limit', type=int, default=0, help='N test images spread evenly over the test set (0: all 10,000)')
    p.add_argument('--calib-images', type=int, default=512)
    p.add_argument('--batch-size', type=int, default=16, help='small batches keep [T*B, ...] in the CPU cache')
    p.add_argument('--energy-images', type=int, default=256)
    p.add_argument('--data-root', help="override the run's recorded data root")
    p.add_argument('--threads', type=int, default=0)
    p.add_argument('--out', default=DEFAULT_OUT)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trained = load_trained_model(args.run)
    if args.data_root:
        trained = dataclasses.replace(trained, data=dict(trained.data, root=args.data_root))
    data = trained.data
    ann = trained.model.eval()
    L = next(m.L for m in ann.modules() if isinstance(m, QCFS))
    test = trained.build_test_set()
    index = evenly_spaced(len(test), args.limit)
    n = len(index)
    X = torch.stack([test[i][0] for i in index])
    Y = torch.tensor([test[i][1] for i in index])
    calib = list(calibration_images(data, args.calib_images).split(128))  # the same batches for both libraries
    relu = relu_copy(ann).eval()
    Ts, bs = sorted(args.T), args.batch_size
    result = dict(run=str(args.run), weights=str(trained.weights), n_test=n, calib_images=args.calib_images, L=L,
                  ann_acc_qcfs=ann_accuracy(ann, X, Y, bs), ann_acc_relu=ann_accuracy(relu, X, Y, bs), rows={})
    print(f"QCFS ANN {result['ann_acc_qcfs']:.2f}% | its ReLU copy {result['ann_acc_relu']:.2f}% | {n} test images")

    def run(name, build, evaluate, Ts_):
        t0 = time.perf_counter()
        snn = build()
        t1 = time.perf_counter()
        acc = evaluate(snn, Ts_)
        t2 = time.perf_counter()
        result['rows'][name] = dict(acc=acc, convert_s=t1 - t0, eval_s=t2 - t1,
                                    ms_per_image_step=1000 * (t2 - t1) / (n * max(Ts_)))
        print(f"{name:>24}: " + ' '.join(f"T={t}:{a:.2f}" for t, a in acc.items())
              + f" | convert {t1 - t0:.1f}s, eval {t2 - t1:.1f}s", flush=True)
        write_result(args.out, 'bench_conversion_cpu.json', 'bench_conversion', machine(), **result)
        return snn

    ev_zoo = lambda snn, ts: snnzoo_accuracy(snn, X, Y, ts, bs)  # noqa: E731
    ev_sj = lambda snn, ts: spikingjelly_accuracy(snn, X, Y, ts, bs)  # noqa: E731
    Tq = [t for t in Ts if t <= args.qcfs_max_T]
    qcfs_snn = run('snnzoo qcfs', lambda: convert(ann, None, T=max(Tq), method='qcfs'), ev_zoo, Tq)
    signed_snn = run('snnzoo qcfs signed', lambda: convert(ann, None, T=max(Tq), method='qcfs', signed=True), ev_zoo,
                     Tq)
    run('snnzoo exact', lambda: convert(ann, None, T=L, method='exact'), ev_zoo, [L])
    # threshold balancing of the ReLU copy, the two libraries alternating
    run('snnzoo percentile 99.9', lambda: convert(relu, calib, T=max(Ts), method='percentile', percentile=99.9),
        ev_zoo, Ts)
    run('spikingjelly 99.9%', lambda: spikingjelly_convert(relu, calib, '99.9%'), ev_sj, Ts)
    run('snnzoo max signed', lambda: convert(relu, calib, T=max(Ts), method='max', signed=True), ev_zoo, Ts)
    run('snnzoo max', lambda: convert(relu, calib, T=max(Ts), method='max'), ev_zoo, Ts)
    run('spikingjelly max', lambda: spikingjelly_convert(relu, calib, 'max'), ev_sj, Ts)

    xe = X[:args.energy_images]
    result['energy_per_image'] = {'ann': energy(ann, xe)}
    for t in sorted({L, 2 * L}):
        for name, snn in (('snnzoo qcfs', qcfs_snn), ('snnzoo qcfs signed', signed_snn)):
            snn.set_T(t)
            result['energy_per_image'][f'{name} T={t}'] = energy(snn, xe)
    result['energy_images'] = len(xe)
    for k, e in result['energy_per_image'].items():
        print(f"energy {k}: paper {e['paper_mj']:.5f} mJ, strict {e['strict_mj']:.5f} mJ per image")
    write_result(args.out, 'bench_conversion_cpu.json', 'bench_conversion', machine(), **result)
    plot(result, f"{args.out}/bench_conversion_cpu.png")


if __name__ == '__main__':
    main()
