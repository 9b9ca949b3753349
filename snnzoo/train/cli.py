"""Console entry points: ``snnzoo-train`` (also ``python -m snnzoo.train``) and ``snnzoo-eval``, both Hydra apps.

The configs live in ``configs/`` at the root of the source checkout (``SNNZOO_CONFIG_DIR`` points elsewhere).
Every field can be overridden on the command line, e.g. ``snnzoo-train experiment=fashion_mnist trainer.epochs=5``.
"""
import os
from pathlib import Path

__all__ = ['train', 'evaluate', 'config_dir']


def config_dir() -> Path:
    """``$SNNZOO_CONFIG_DIR``, else ``configs/`` beside the ``snnzoo`` package (a source checkout)."""
    path = Path(os.environ.get('SNNZOO_CONFIG_DIR') or Path(__file__).resolve().parents[2] / 'configs')
    if not (path / 'train.yaml').is_file():
        raise FileNotFoundError(f"snnzoo's Hydra configs were not found at {path}: install snnzoo from its source "
                                f"checkout (pip install -e .) or set SNNZOO_CONFIG_DIR to the configs/ folder")
    return path


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
