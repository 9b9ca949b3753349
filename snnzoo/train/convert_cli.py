"""``snnzoo-convert``: turn an original repository's checkpoint into snnzoo's published format.

    snnzoo-convert spikformer_4_384_cifar original.pth.tar --tag cifar10_orig --out checkpoints/ \
        [--model-args '{"num_classes": 100}'] [--ema]

Loads the file through ``snnzoo.load_checkpoint`` (weights-only, key mapping, never-used parameters dropped), writes
``<model>.<tag>-<sha256[:16]>.safetensors`` and its ``config.json``, and prints the sha256 and the manifest entry.
"""
import argparse
import json
import sys

from ..models import create_model, load_checkpoint
from ..models._builder import save_pretrained


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='snnzoo-convert', description=__doc__.splitlines()[0])
    parser.add_argument('model', help='registered snnzoo model name, e.g. spikformer_4_384_cifar')
    parser.add_argument('checkpoint', help='the original .pth / .pth.tar / .safetensors file')
    parser.add_argument('--tag', required=True, help='weight tag, e.g. cifar10_orig')
    parser.add_argument('--out', default='.', help='output folder')
    parser.add_argument('--model-args', default='{}', help='JSON keyword overrides for the model, e.g. num_classes')
    parser.add_argument('--ema', action='store_true', help='take the EMA weights when the file holds both')
    args = parser.parse_args(argv)
    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as e:
        raise SystemExit(f"snnzoo-convert: --model-args is not a JSON object ({e}), e.g. '{{\"num_classes\": 100}}'")
    if not isinstance(model_args, dict):
        raise SystemExit(f"snnzoo-convert: --model-args must be a JSON object, got {args.model_args!r}")
    try:  # the file gives tensors only: the model is the one named on this command line
        model = create_model(args.model, backend='torch', **model_args)
        load_checkpoint(model, args.checkpoint, use_ema=args.ema)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        raise SystemExit(f"snnzoo-convert: {e}") from e
    path = save_pretrained(model, args.out, args.tag, model_args)
    config = json.loads(path.with_name(f"{model.pretrained_cfg.get('architecture') or args.model}.{args.tag}"
                                       f".config.json").read_text())
    entry = dict(model=args.model, tag=args.tag, file=path.name, sha256=config['sha256'], source=args.checkpoint,
                 model_args=model_args)
    print(f"wrote {path}\nsha256 {config['sha256']}\nmanifest entry: {json.dumps(entry)}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
