"""``snnzoo-energy``: the energy report of a registered model over N batches of a data set or its default input.

    snnzoo-energy spikformer_4_384_cifar                                   # default input: synthetic images
    snnzoo-energy spikformer_4_384_cifar --checkpoint ckpt.safetensors --data cifar10 --data-dir data/cifar10 \\
        --split test --batches 10 --batch-size 64 --convention strict --preset 45nm_int8 --out reports/
    snnzoo-energy spikformer_2_256_dvs --data nmnist --data-dir data/nmnist --data-args T=16 split_by=number \\
        --model-args T=16 in_chans=2 img_size=34 num_classes=10

Prints the markdown report (its convention stated) and writes ``<out>/<stem>.{md,csv,json,png}``.
"""
import argparse
import ast
import sys
from typing import Optional

import torch

from ..layers.temporal import NonFiniteInputError, check_finite
from .counter import Profiler
from .report import CONVENTIONS, PRESETS


def _key_values(items: list, flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise SystemExit(f"snnzoo-energy: {flag} expects key=value pairs, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='snnzoo-energy', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Conventions:\n' + '\n'.join(f'  {k}: {v}' for k, v in CONVENTIONS.items()))
    p.add_argument('model', help="a registered model name (snnzoo.list_models())")
    p.add_argument('--model-args', nargs='*', metavar='KEY=VALUE',
                   help="constructor overrides, e.g. T=4 num_classes=10 embed_dim=256")
    p.add_argument('--checkpoint', help="weights to load (snnzoo.load_checkpoint: ours or the original's)")
    p.add_argument('--data', help="a snnzoo.data data set name (snnzoo.data.list_datasets()); "
                                  "default: synthetic images of the model's input size")
    p.add_argument('--data-dir', help="the data set's root folder")
    p.add_argument('--split', default='test', help="data split (default: test)")
    p.add_argument('--data-args', nargs='*', metavar='KEY=VALUE', help="data set options, e.g. T=16 split_by=number")
    p.add_argument('--batches', type=int, default=1, help="number of batches to profile (default: 1)")
    p.add_argument('--batch-size', type=int, default=16, help="images per batch (default: 16)")
    p.add_argument('--workers', type=int, default=0, help="data loader workers (default: 0)")
    p.add_argument('--input-size', type=int, nargs=3, metavar=('C', 'H', 'W'),
                   help="synthetic input size (default: the model's)")
    p.add_argument('--seed', type=int, default=0, help="seed of the synthetic input (default: 0)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--convention', choices=list(CONVENTIONS), default='paper',
                   help="convention of the printed table (both are in the files)")
    p.add_argument('--preset', choices=list(PRESETS), default='45nm_fp32')
    p.add_argument('--out', default='energy_reports', help="output folder (default: ./energy_reports)")
    p.add_argument('--no-plot', action='store_true', help="do not write the PNG plot")
    return p


def _synthetic_input(model, args, model_args: dict) -> tuple:
    """``args.batches`` seeded batches of uniform images at the model's input size, normalised as its data is."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    size = args.input_size
    if size is None:
        c, h, w = cfg.get('input_size', (3, 224, 224))
        img = model_args.get('img_size')
        if img is not None:
            h, w = (img, img) if isinstance(img, int) else img
        size = (model_args.get('in_chans', c), h, w)
    g = torch.Generator().manual_seed(args.seed)
    mean, std = cfg.get('mean'), cfg.get('std')
    if mean is None or std is None or len(mean) != size[0]:
        mean, std = (0.0,) * size[0], (1.0,) * size[0]
    mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    batches = [(torch.rand(args.batch_size, *size, generator=g) - mean) / std for _ in range(args.batches)]
    desc = f"synthetic: uniform [0, 1) images {list(size)}, normalised with the model's mean/std, seed {args.seed}"
    return batches, desc


def _dataset_batches(args) -> tuple:
    """A DataLoader over ``snnzoo.data.build_dataset(args.data, args.data_dir, args.split, **data_args)``."""
    from snnzoo.data import build_dataset
    from torch.utils.data import DataLoader

    dataset = build_dataset(args.data, args.data_dir, args.split, **_key_values(args.data_args, '--data-args'))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    return loader, f"{args.data} ({args.split} split, first {args.batches} batches of {args.batch_size})"


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        raise SystemExit("snnzoo-energy: --batches and --batch-size must be positive")
    import snnzoo

    model_args = _key_values(args.model_args, '--model-args')
    try:
        model = snnzoo.create_model(args.model, **model_args)
        if args.checkpoint:
            snnzoo.load_checkpoint(model, args.checkpoint)
        model.to(args.device)
        batches, data_desc = _dataset_batches(args) if args.data else _synthetic_input(model, args, model_args)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        raise SystemExit(f"snnzoo-energy: {e}") from e

    correct = labelled = 0
    with Profiler(model) as profiler:
        for i, batch in enumerate(batches):
            if i >= args.batches:
                break
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            try:
                check_finite(torch.as_tensor(x).cpu(), f"batch {i} of {data_desc}")
            except NonFiniteInputError as e:
                raise SystemExit(f"snnzoo-energy: {e}") from e
            out = profiler(x)
            if y is not None and out.dim() == 2:
                correct += (out.argmax(-1).cpu() == torch.as_tensor(y)).sum().item()
                labelled += len(y)
    meta = {'model': args.model, 'model_args': model_args, 'checkpoint': args.checkpoint, 'data': data_desc,
            'device': str(args.device)}
    if labelled:
        meta['top1'] = correct / labelled
    report = profiler.report(meta)

    print(report.to_markdown(args.convention, args.preset))
    print(f"Input: {data_desc}." + (f" Top-1 on these batches: {100 * meta['top1']:.2f}%." if labelled else ''))
    stem = args.model + (f'_{args.data}' if args.data else '')
    paths = report.save(args.out, stem, args.convention, args.preset, plot=not args.no_plot)
    print('Wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
