"""``snnzoo-ann2snn``: convert a trained ANN run into spiking networks and report their test accuracy versus T.

    snnzoo-ann2snn outputs/qcfs_cifar10                       # QCFS, exact and threshold balancing at T = 1..64
    snnzoo-ann2snn <run> --methods qcfs --T 4 8 16 --limit 1000 --json result.json
    snnzoo-ann2snn <run> --methods qcfs max --signed                 # signed IF neurons

The run is rebuilt by :func:`snnzoo.train.checkpoint.load_trained_model` (its stored config is data: a registered
model name and checked keywords); its recorded test set is the evaluation data, and threshold balancing calibrates on
``--calib-images`` images of the training split (eval transforms, a seeded random subset). One pass at the largest T
gives every smaller T (the network is causal); the exact mode runs at T = L, where it equals the QCFS ANN.
"""
import argparse
import dataclasses
import json
import sys
import time
from typing import Dict, List, Sequence

import torch

__all__ = ['main', 'accuracy_vs_T', 'calibration_images', 'evenly_spaced']

DEFAULT_T = (1, 2, 4, 8, 16, 32, 64)


@torch.no_grad()
def accuracy_vs_T(snn, loader, Ts: Sequence[int]) -> Dict[int, float]:
    """Top-1 accuracy (%) of ``snn`` (a :class:`snnzoo.conversion.ConvertedSNN`) after each T in ``Ts``, from one
    pass at ``max(Ts)`` steps over ``loader``."""
    snn.set_T(max(Ts))
    correct, n = torch.zeros(len(Ts), dtype=torch.long), 0
    index = torch.tensor([t - 1 for t in Ts])
    for x, y in loader:
        pred = snn.forward_running(x)[index].argmax(-1)  # [len(Ts), B]
        correct += (pred == y).sum(1)
        n += len(y)
    return {t: 100.0 * c / n for t, c in zip(Ts, correct.tolist())}


@torch.no_grad()
def ann_accuracy(ann, loader) -> float:
    correct = n = 0
    for x, y in loader:
        correct += int((ann(x).argmax(-1) == y).sum())
        n += len(y)
    return 100.0 * correct / n


def evenly_spaced(total: int, n: int) -> list:
    """``n`` indices spread evenly over ``range(total)`` (all of them when ``n`` is 0 or at least ``total``): a subset
    of a test set stored class by class (an image folder) keeps every class in proportion, unlike its first ``n``."""
    if not n or n >= total:
        return list(range(total))
    return [i * total // n for i in range(n)]


def calibration_images(data: dict, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` training images of the data set ``data`` describes (its name and root), with eval transforms."""
    from snnzoo.data import build_dataset, dataset_info
    from snnzoo.data.transforms import build_transforms
    name = data.get('name')
    transform = build_transforms(name, is_training=False) if dataset_info(name).kind == 'image' else None
    train = build_dataset(name, data.get('root'), 'train', transform=transform)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([torch.as_tensor(train[int(i)][0]) for i in idx])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='snnzoo-ann2snn', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', help='a training run folder, its checkpoints/last.pt, or an exported model folder')
    p.add_argument('--methods', nargs='+', default=['qcfs', 'exact', 'max', 'percentile'],
                   choices=['max', 'percentile', 'qcfs', 'exact'])
    p.add_argument('--T', nargs='+', type=int, default=list(DEFAULT_T), help='time steps to report')
    p.add_argument('--channelwise', action='store_true', help='one threshold per channel (max / percentile)')
    p.add_argument('--signed', action='store_true',
                   help='signed IF neurons (spikes in {-1, 0, 1}: fewer steps for the same accuracy; not for exact)')
    p.add_argument('--percentile', type=float, default=99.9)
    p.add_argument('--calib-images', type=int, default=512, help='training images for threshold balancing')
    p.add_argument('--data-root', help="override the run's recorded data root")
    p.add_argument('--batch-size', type=int, default=16, help='small batches keep [T*B, ...] in the CPU cache')
    p.add_argument('--limit', type=int, default=0, help='evaluate on N test images spread evenly over the test set')
    p.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave as is)')
    p.add_argument('--json', help='write the results to this JSON file')
    p.add_argument('--trust-config', action='store_true',
                   help="build _target_ entries of the run's config (only for runs you made yourself)")
    return p


def main(argv: List[str] = None) -> int:
    args = _parser().parse_args(argv)
    from snnzoo.conversion import convert
    from snnzoo.layers import QCFS
    from snnzoo.train.checkpoint import CheckpointError, load_trained_model
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.T) < 1:
        raise SystemExit(f"snnzoo-ann2snn: --T values must be >= 1, got {args.T}")
    try:
        trained = load_trained_model(args.run, trust_config=args.trust_config)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"snnzoo-ann2snn: {e}")
    if trained.data is None:
        raise SystemExit(f"snnzoo-ann2snn: {args.run} records no test data set to evaluate on")
    if args.data_root:
        trained = dataclasses.replace(trained, data=dict(trained.data, root=args.data_root))
    ann = trained.model.eval()
    test = trained.build_test_set()
    test = torch.utils.data.Subset(test, evenly_spaced(len(test), args.limit))
    loader = torch.utils.data.DataLoader(test, batch_size=args.batch_size)
    levels = sorted({m.L for m in ann.modules() if isinstance(m, QCFS)})
    calib = None
    if {'max', 'percentile'} & set(args.methods):
        calib = calibration_images(trained.data, args.calib_images)
    result = {'run': str(args.run), 'weights': str(trained.weights), 'ann_acc': ann_accuracy(ann, loader),
              'T': sorted(args.T), 'methods': {}}
    print(f"ANN: {result['ann_acc']:.2f}%")
    for method in args.methods:
        if method in ('qcfs', 'exact') and not levels:
            print(f"{method}: skipped (the ANN has no QCFS activation)")
            continue
        if method == 'exact' and len(levels) != 1:
            print(f"exact: skipped (QCFS layers with different L: {levels})")
            continue
        Ts = [levels[0]] if method == 'exact' else sorted(args.T)
        start = time.perf_counter()
        snn = convert(ann, calib, T=max(Ts), method=method, percentile=args.percentile,
                      channelwise=args.channelwise, signed=args.signed and method != 'exact')
        acc = accuracy_vs_T(snn, loader, Ts)
        result['methods'][method] = {'acc': acc, 'seconds': time.perf_counter() - start}
        print(f"{method}: " + ', '.join(f"T={t} {a:.2f}%" for t, a in acc.items()), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
