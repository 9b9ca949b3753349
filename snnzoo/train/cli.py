"""Console entry points: ``snnzoo-train`` (also ``python -m snnzoo.train``) and ``snnzoo-eval``, both Hydra apps.

The configs live in ``configs/`` at the root of the source checkout; a wheel installs them to
``<prefix>/share/snnzoo/configs``; ``SNNZOO_CONFIG_DIR`` points elsewhere.
Every field can be overridden on the command line, e.g. ``snnzoo-train experiment=fashion_mnist trainer.epochs=5``.
"""
import os
import sys
from pathlib import Path

__all__ = ['train', 'evaluate', 'config_dir']


def config_dir() -> Path:
    """``$SNNZOO_CONFIG_DIR``, else ``configs/`` of the source checkout, else the copy a wheel installed."""
    if os.environ.get('SNNZOO_CONFIG_DIR'):
        candidates = [Path(os.environ['SNNZOO_CONFIG_DIR'])]
    else:
        checkout = Path(__file__).resolve().parents[2] / 'configs'
        candidates = [checkout, Path(sys.prefix) / 'share' / 'snnzoo' / 'configs']
    for path in candidates:
        if (path / 'train.yaml').is_file():
            return path
    raise FileNotFoundError(f"snnzoo's Hydra configs were not found (looked in {', '.join(map(str, candidates))}): "
                            f"reinstall snnzoo (pip install snnzoo, or pip install -e . from its source checkout) or "
                            f"set SNNZOO_CONFIG_DIR to a folder holding train.yaml and its config groups")


def _run(task, config_name: str) -> None:
    import hydra
    hydra.main(config_path=str(config_dir()), config_name=config_name, version_base='1.3')(task)()


def _train_task(cfg) -> float:
    from .loop import run_training
    return run_training(cfg)['test_acc']


def _eval_task(cfg) -> float:
    from .loop import run_evaluation
    return run_evaluation(cfg)['test_acc']


def train() -> None:
    """``snnzoo-train [overrides]``: compose configs/train.yaml with the overrides and train."""
    _run(_train_task, 'train')


def evaluate() -> None:
    """``snnzoo-eval checkpoint=<run folder | model.safetensors | last.pt> [overrides]``."""
    _run(_eval_task, 'eval')
