"""Host emulation of snnzoo's CUDA kernels for the CPU tests.

:func:`build` compiles tests/cuda_host/launch.cpp (the real ``__global__`` functions of neuron_kernels.cu through
the shim of the CUDA built-ins in shim.h) with g++, once per source hash; :class:`Emulator` launches them with the
variant, :class:`snnzoo.cuda.ops.Launch` and kernel arguments that ``snnzoo.cuda.ops`` computes, so that installed
as ``ops._HOST_RUN`` it runs the custom ops on CPU tensors exactly as on a GPU (grid, block, vector path, block
reduction), and raises :class:`KernelFault` where a GPU would report an error (misaligned vector, partial-warp
shuffle).
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import snnzoo.cuda as snn_cuda
from snnzoo.cuda import kernels, ops

HOST_DIR = Path(__file__).resolve().parent / 'cuda_host'
CUDA_DIR = Path(snn_cuda.__file__).resolve().parent
DTYPE_CODES = {'float32': 0, 'float16': 1, 'bfloat16': 2}
SOURCES = (HOST_DIR / 'launch.cpp', HOST_DIR / 'shim.h', CUDA_DIR / 'neuron_kernels.cu', CUDA_DIR / 'neuron_core.cuh')


class KernelFault(RuntimeError):
    """The emulated kernel did what faults on a GPU."""


def compiler():
    return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def build(out_dir: Path, kernel_source: Path = CUDA_DIR / 'neuron_kernels.cu', optimize: bool = True) -> ctypes.CDLL:
    """g++ build of the kernels for the host (every float operation rounded, like NVRTC --fmad=false), cached in
    ``out_dir`` by the hash of its sources; ``kernel_source`` replaces neuron_kernels.cu (tests of the tests, which
    build faster unoptimised)."""
    digest = hashlib.sha256(str(optimize).encode())
    for path in (*SOURCES, kernel_source):
        digest.update(path.read_bytes())
    out = Path(out_dir) / f'libsnn_emu_{digest.hexdigest()[:16]}.so'
    if not out.exists():
        cmd = [compiler(), '-std=c++20', '-O1' if optimize else '-O0', '-ffp-contract=off', '-shared', '-fPIC',
               '-I', str(CUDA_DIR), f'-DSNN_KERNELS="{kernel_source}"', str(HOST_DIR / 'launch.cpp'),
               '-o', f'{out}.{os.getpid()}.tmp']
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        os.replace(f'{out}.{os.getpid()}.tmp', out)
    lib = ctypes.CDLL(str(out))
    p, f, i, ll, u = ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_longlong, ctypes.c_uint
    lib.emu_error.restype = ctypes.c_char_p
    lib.emu_neuron_fwd.argtypes = [i, i, i, u, u, p, ll] + [p] * 6 + [ll, i, f, f, f, i]
    lib.emu_neuron_bwd.argtypes = [i, i, i, i, u, u, p, ll] + [p] * 8 + [ll, i, f, f, f, f, f, i]
    return lib


class Emulator:
    """``ops._HOST_RUN``: run ``variant`` with ``launch`` and the kernel ``args`` on the host (only ``blocks`` of
    the grid when given); every launch is recorded in ``launches``."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.blocks = None
        self.launches = []

    def __call__(self, variant, launch, args):
        self.launches.append((variant, launch, args))
        blocks = None if self.blocks is None else (ctypes.c_longlong * len(self.blocks))(*self.blocks)
        nblocks = 0 if self.blocks is None else len(self.blocks)
        *pointers, n, steps = args[:-4 if variant.direction == 'fwd' else -6]
        scalars = [float(a) for a in args[len(pointers) + 2:-1]]
        head = [DTYPE_CODES[variant.dtype], kernels.CHARGES[variant.charge], int(variant.hard_reset)]
        if variant.direction == 'bwd':
            head.append(variant.surrogate)
        run = self.lib.emu_neuron_fwd if variant.direction == 'fwd' else self.lib.emu_neuron_bwd
        rc = run(*head, launch.grid, launch.block, blocks, nblocks, *[int(a) or None for a in pointers], int(n),
                 int(steps), *scalars, int(args[-1]))
        if rc != 0:
            raise KernelFault(f"{variant.name_expression} with {launch}: {self.lib.emu_error().decode()}")


@pytest.fixture(scope='session')
def emulator_lib(request, tmp_path_factory):
    """The kernels built for the host, once per source hash (kept in pytest's cache directory, or in a temporary one
    when the cache plugin is off)."""
    if not compiler():
        pytest.skip('no C++ compiler (g++) to build the CUDA kernels for the host')
    cache = getattr(request.config, 'cache', None)
    return build(cache.mkdir('snnzoo_cuda_emulator') if cache else tmp_path_factory.mktemp('snnzoo_cuda_emulator'))


@pytest.fixture
def host_ops(emulator_lib, monkeypatch):
    """Route snnzoo::neuron_fwd / neuron_bwd on CPU tensors to the emulated kernels (ops.py's launches)."""
    emulator = Emulator(emulator_lib)
    monkeypatch.setattr(ops, '_HOST_RUN', emulator)
    return emulator
