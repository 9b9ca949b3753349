"""``python -m snnzoo.train [overrides]`` is ``snnzoo-train``."""
from .cli import train

if __name__ == '__main__':
    train()
