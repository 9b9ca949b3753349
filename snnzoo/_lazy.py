"""Keep ``import snnzoo`` light: timm imports wandb (for an optional logging helper) when it is installed.

We import timm with wandb hidden and give timm's summary module a proxy that imports wandb on first use, so timm's
logging still works for those who call it, and nobody else pays for (or is surprised by) a wandb import.
"""
import importlib
import sys
import types


class LazyModule(types.ModuleType):
    """A module proxy that imports ``name`` on first attribute access."""

    def __getattr__(self, attr):
        module = importlib.import_module(self.__name__)
        return getattr(module, attr)


def import_timm_without_wandb() -> None:
    if 'timm' in sys.modules or 'wandb' in sys.modules:
        return
    sys.modules['wandb'] = None  # `import wandb` now raises ImportError, which timm tolerates
    try:
        import timm  # noqa: F401
        import timm.utils.summary as summary
    finally:
        del sys.modules['wandb']
    summary.wandb = LazyModule('wandb')
