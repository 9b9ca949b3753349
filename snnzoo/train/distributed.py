"""Multi-process training through ``torchrun`` and DistributedDataParallel (nccl on CUDA, gloo on the CPU).

One process per device. ``torchrun --nproc_per_node=N -m snnzoo.train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; without them training runs in a single process.
"""
import datetime
import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ['DistInfo', 'init_distributed', 'resolve_device', 'all_reduce_sum', 'all_gather_object',
           'broadcast_object', 'barrier', 'cleanup', 'ShardedSampler']


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = 'auto', local_rank: int = 0) -> torch.device:
    """``'auto'``: this process's GPU when CUDA is available, else the CPU; ``'cuda'``: GPU ``local_rank``."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(name)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={name!r} but no CUDA GPU is available here; "
                               f"use trainer.device=cpu (or auto)")
        if device.index is None:
            device = torch.device('cuda', local_rank)
    return device


def init_distributed(device: str = 'auto', timeout_s: int = 1800) -> DistInfo:
    """Join the process group torchrun describes in the environment (if any) and pick this process's device."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        dist.init_process_group('nccl' if dev.type == 'cuda' else 'gloo', rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all processes (``t`` itself when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` when not distributed)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardedSampler(Sampler[int]):
    """Sample indices for one process: a (seed, epoch) permutation split across ranks, resumable mid-epoch.

    Training (``shuffle=True``): the permutation of ``range(n)`` seeded by ``seed + epoch`` is padded (by wrapping)
    to a multiple of ``world_size`` and rank ``r`` takes ``perm[r::world_size]``, as DistributedSampler does, so the
    k-th batches of all ranks together are the k-th batch of a single process with ``world_size`` times the batch size.
    ``set_epoch(epoch, start)`` skips the first ``start`` indices of this rank (to resume inside an epoch).
    Evaluation (``shuffle=False``): ``range(n)[r::world_size]`` with no padding, so every sample is counted once.
    """

    def __init__(self, n: int, world_size: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        if n <= 0:
            raise ValueError("the data set is empty")
        self.n, self.world_size, self.rank, self.shuffle, self.seed = n, world_size, rank, shuffle, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list:
        if not self.shuffle:
            return list(range(self.rank, self.n, self.world_size))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = math.ceil(self.n / self.world_size) * self.world_size
        perm += (perm * math.ceil(total / self.n))[:total - self.n]
        return perm[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world_size)) - self.start
        return math.ceil(self.n / self.world_size) - self.start

