"""Metric logging: a JSON-lines file in the run folder, and wandb when asked for (offline or disabled by default).

wandb is never required: ``logger=none`` never imports it, ``logger=wandb`` runs offline unless ``WANDB_MODE`` says
otherwise (no account or network needed; ``wandb sync`` uploads later), and a wandb that fails to start only warns.
"""
import json
import logging
import resource
import sys
from pathlib import Path
from typing import Optional

import torch

__all__ = ['MetricLogger', 'peak_memory_mb']

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: allocated CUDA memory on a GPU, else the resident set size."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2 ** 20 if sys.platform == 'darwin' else rss / 2 ** 10


class MetricLogger:
    """Append metrics to ``<output_dir>/metrics.jsonl`` and, with a wandb config, to a wandb run (main process only).

    ``wandb_cfg`` keys: ``mode`` ('offline', 'online' or 'disabled'), ``project``, ``name``, ``group``, ``tags``,
    ``dir``.
    """

    def __init__(self, output_dir: Path, enabled: bool = True, wandb_cfg: Optional[dict] = None,
                 config: Optional[dict] = None):
        self.enabled = enabled
        self.path = Path(output_dir) / 'metrics.jsonl'
        self.run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if wandb_cfg and wandb_cfg.get('mode', 'offline') != 'disabled':
            self.run = self._start_wandb(wandb_cfg, config, output_dir)

    @staticmethod
    def _start_wandb(cfg: dict, config: Optional[dict], output_dir: Path):
        try:
            import wandb
        except ImportError:
            log.warning("logger=wandb but wandb is not installed (pip install wandb); logging to metrics.jsonl only")
            return None
        wandb_dir = Path(cfg.get('dir') or output_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        try:
            return wandb.init(mode=cfg.get('mode', 'offline'), project=cfg.get('project'), name=cfg.get('name'),
                              group=cfg.get('group'), tags=list(cfg.get('tags') or []), dir=str(wandb_dir),
                              config=config)
        except Exception as e:  # no credentials, no network: never fatal
            log.warning(f"wandb could not start ({e}); logging to metrics.jsonl only. "
                        f"Use logger.mode=offline (then `wandb sync`) or logger=none")
            return None

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(dict(metrics, step=step)) + '\n')
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.summary.update(metrics)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
