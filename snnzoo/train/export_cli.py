"""``snnzoo-export``: write a registered model as a NIR graph (neuromorphic hardware) or an ONNX file (onnxruntime).

    snnzoo-export sew_resnet_nmnist --pretrained --format nir --out sew_nmnist.nir
    snnzoo-export spikformer_4_384_cifar --checkpoint ckpt.safetensors --format onnx --out spikformer.onnx --T 4
    snnzoo-export sew_resnet18 --model-args '{"num_classes": 10}' --input-size 3 64 64 --format onnx --out sew.onnx
    snnzoo-export qcfs_resnet_cifar --pretrained --convert qcfs --T 8 --format nir --out qcfs_snn.nir
    snnzoo-export qcfs_resnet_cifar --pretrained --convert exact --T 8 --format onnx --out qcfs_exact.onnx

``--convert qcfs`` / ``exact`` writes the spiking network ``snnzoo.conversion.convert(model, None, T, method)`` of a
QCFS ANN (threshold balancing, ``max`` / ``percentile``, needs calibration images: convert in Python, then call
``snnzoo.export.to_nir``). NIR: one time step of one sample in, per-step outputs out (the model's logits are their mean
over T); a network NIR cannot express (spiking attention, SEW AND / IAND, the accumulate-then-fire neurons of
``exact``) stops with the first such operation named. ONNX: the model's usual input (static images ``[B, C, H, W]`` or
event frames ``[B, T, C, H, W]``), T unrolled, batch dynamic.
"""
import argparse
import json
import sys

import torch

from ..models import create_model, load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='snnzoo-export', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help="a registered model name (snnzoo.list_models())")
    p.add_argument('--checkpoint', help="weights to load (snnzoo.load_checkpoint: ours or the original's)")
    p.add_argument('--pretrained', action='store_true', help="load the model's published weights")
    p.add_argument('--model-args', default='{}', help="JSON constructor overrides, e.g. '{\"num_classes\": 10}'")
    p.add_argument('--format', required=True, choices=['nir', 'onnx'])
    p.add_argument('--out', required=True, help="the file to write")
    p.add_argument('--convert', choices=['qcfs', 'exact'],
                   help="export the spiking network converted from this QCFS ANN (snnzoo.conversion.convert)")
    p.add_argument('--T', type=int, help="time steps a static image is repeated for (default: the model's; with "
                                         "--convert: the converted network's, default 8)")
    p.add_argument('--input-size', type=int, nargs='+', metavar='N',
                   help="per-sample input shape, e.g. 3 64 64 or (frames) 8 2 34 34 (default: the model's)")
    p.add_argument('--dt', type=float, default=1e-4, help="NIR: the Euler step the neurons are written for")
    p.add_argument('--fuse', action='store_true', help="ONNX: fold BatchNorm into the preceding layers first")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .. import export   # needs the 'export' extra for NIR / ONNX
    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as e:
        raise SystemExit(f"snnzoo-export: --model-args is not valid JSON ({e}): {args.model_args!r}")
    if args.T is not None and not args.convert:
        model_args['T'] = args.T
    if not args.convert:
        model_args['backend'] = 'torch'
    model = create_model(args.model, pretrained=args.pretrained, **model_args)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    model.eval()
    size = args.input_size or (model.pretrained_cfg or {}).get('input_size')
    if args.convert:
        from ..conversion import convert
        try:
            model = convert(model, None, args.T or 8, args.convert, backend='torch')
        except (ValueError, NotImplementedError) as e:
            raise SystemExit(f"snnzoo-export: cannot convert {args.model}: {e}")
    if size is None:
        raise SystemExit(f"snnzoo-export: {args.model} has no default input size; pass --input-size")
    sample = torch.randn(2, *size)
    try:
        if args.format == 'nir':
            import nir
            nir.write(args.out, export.to_nir(model, sample, dt=args.dt))
        else:
            export.to_onnx(model, args.out, sample=sample, fuse=args.fuse)
    except export.NIRExportError as e:
        print(f"snnzoo-export: {args.model} cannot be written as NIR: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"wrote {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
