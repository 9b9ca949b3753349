"""Kernel variants, NVRTC compilation and the compiled-kernel caches.

A :class:`Variant` names one template instantiation of ``neuron_kernels.cu``: direction (``'fwd'`` / ``'bwd'``),
storage dtype, charge (``'if'`` / ``'lif'`` / ``'plif'``), hard or soft reset and, for backward, the surrogate. The
cheap options (decay_input, detach_reset, tau, thresholds, surrogate alpha, optional tensors) are runtime arguments,
so there are 18 forward and 72 backward variants. Compiled code is cached per (variant, architecture): in memory, and
on disk under ``$SNNZOO_KERNEL_CACHE`` (default ``~/.cache/snnzoo/kernels``, each file checked against its sha256
and size before use); loaded kernels per (variant, device).

CuPy is imported only when something is compiled or loaded.
"""
import hashlib
import itertools
import math
import os
import threading
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

__all__ = ['Variant', 'all_variants', 'variant_for', 'compile_variants', 'binary', 'function', 'surrogate_constants',
           'DTYPES', 'CHARGES', 'SURROGATE_IDS', 'COMPILE_OPTIONS', 'CompileError']

_DIR = Path(__file__).resolve().parent
CORE_HEADER = _DIR / 'neuron_core.cuh'
KERNEL_SOURCE = _DIR / 'neuron_kernels.cu'

# torch dtype name -> storage type in neuron_core.cuh
DTYPES = {'float32': 'float', 'float16': 'snn::half16', 'bfloat16': 'snn::bfloat16'}
CHARGES = {'if': 0, 'lif': 1, 'plif': 2}                       # snn::Charge
SURROGATE_IDS = {'sigmoid': 0, 'atan': 1, 'rectangle': 2, 'piecewise_quadratic': 3}  # snn::Surrogate
# Every float operation separately rounded (no contraction into FMA), as the torch backend computes it.
COMPILE_OPTIONS = ('--std=c++17', '--fmad=false')


class CompileError(RuntimeError):
    """NVRTC rejected the kernel source; the message carries the compiler log."""


class Variant(NamedTuple):
    """One kernel instantiation; ``surrogate`` is the snn::Surrogate id for backward, None for forward."""
    direction: str
    dtype: str
    charge: str
    hard_reset: bool
    surrogate: Optional[int] = None

    @property
    def name_expression(self) -> str:
        args = [DTYPES[self.dtype], str(CHARGES[self.charge]), 'true' if self.hard_reset else 'false']
        if self.direction == 'bwd':
            args.append(str(self.surrogate))
        return f"snn::neuron_{self.direction}<{', '.join(args)}>"


def variant_for(direction: str, dtype: str, charge: str, hard_reset: bool, surrogate: int) -> Variant:
    """The variant running ``direction`` for these options (validated; ``surrogate`` ignored for forward)."""
    if direction not in ('fwd', 'bwd'):
        raise ValueError(f"direction must be 'fwd' or 'bwd', got {direction!r}")
    if dtype not in DTYPES:
        raise TypeError(f"the fused kernels store {sorted(DTYPES)}, got {dtype}; use backend='torch' for other dtypes")
    if charge not in CHARGES:
        raise ValueError(f"unknown charge {charge!r}; valid charges are {sorted(CHARGES)}")
    if direction == 'bwd' and surrogate not in SURROGATE_IDS.values():
        raise ValueError(f"unknown surrogate id {surrogate!r}; valid ids are {SURROGATE_IDS}")
    return Variant(direction, dtype, charge, bool(hard_reset), int(surrogate) if direction == 'bwd' else None)


def all_variants() -> list[Variant]:
    """Every instantiation: 18 forward + 72 backward."""
    base = list(itertools.product(DTYPES, CHARGES, (True, False)))
    return ([Variant('fwd', *b) for b in base]
            + [Variant('bwd', *b, s) for b in base for s in SURROGATE_IDS.values()])


def surrogate_constants(surrogate: int, alpha: float) -> tuple[np.float32, np.float32]:
    """(c1, c2) of snn::Params for a surrogate id: float32 of the scalars the torch backend uses."""
    a = float(alpha)
    c1, c2 = {0: (a, a), 1: (math.pi / 2 * a, a / 2), 2: (a / 2, 1.0 / a), 3: (-a * a, a)}[surrogate]
    return np.float32(c1), np.float32(c2)


def _nvrtc():
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # ImportError, or a CuPy whose NVRTC library cannot load
        raise RuntimeError(f"NVRTC (through CuPy) is not usable here: {error}; install it with "
                           f"pip install 'snnzoo[cuda]', or use backend='torch'") from error
    return nvrtc


class Compiled(NamedTuple):
    image: bytes                  # CUBIN for an sm_XX target, PTX for a compute_XX target
    lowered: dict                 # name expression -> mangled kernel name


def _target(arch: int) -> str:
    """sm_XX when NVRTC knows the architecture, else PTX for the newest one it knows (the driver JIT-compiles it)."""
    supported = _nvrtc().getSupportedArchs()
    if arch in supported:
        return f'sm_{arch}'
    older = [a for a in supported if a < arch]
    if not older:
        raise RuntimeError(f"this NVRTC supports architectures {list(supported)}, not sm_{arch}")
    return f'compute_{max(older)}'


def compile_variants(variants, arch: int) -> Compiled:
    """Compile the given variants into one program for ``arch`` (e.g. 80, 90); raise CompileError with the log."""
    nvrtc = _nvrtc()
    target = _target(arch)
    program = nvrtc.createProgram(KERNEL_SOURCE.read_text(), KERNEL_SOURCE.name,
                                  [CORE_HEADER.read_bytes()], [CORE_HEADER.name.encode()])
    try:
        names = [v.name_expression for v in variants]
        for name in names:
            nvrtc.addNameExpression(program, name)
        try:
            nvrtc.compileProgram(program, [*COMPILE_OPTIONS, f'-arch={target}'])
        except nvrtc.NVRTCError as error:
            raise CompileError(f"NVRTC failed for {target} on {names}: {error}\n"
                               f"{nvrtc.getProgramLog(program)}") from None
        image = nvrtc.getCUBIN(program) if target.startswith('sm_') else nvrtc.getPTX(program)
        if isinstance(image, str):
            image = image.encode()
        return Compiled(image, {name: nvrtc.getLoweredName(program, name) for name in names})
    finally:
        nvrtc.destroyProgram(program)


def cache_dir() -> Path:
    root = os.environ.get('SNNZOO_KERNEL_CACHE')
    if root:
        return Path(root)
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'snnzoo' / 'kernels'


def _cache_key(variant: Variant, arch: int) -> str:
    digest = hashlib.sha256()
    for part in (CORE_HEADER.read_bytes(), KERNEL_SOURCE.read_bytes(), repr(COMPILE_OPTIONS).encode(),
                 repr(_nvrtc().getVersion()).encode(), _target(arch).encode(), variant.name_expression.encode()):
        digest.update(part)
        digest.update(b'\0')
    return digest.hexdigest()[:32]


_binaries: dict = {}
_functions: dict = {}
_lock = threading.Lock()


def _read_cached(path: Path) -> Optional[tuple[bytes, str]]:
    """(image, lowered name) of a cache file ``<lowered>\n<sha256 of image> <size>\n<image>``, or None when it is
    missing, truncated or corrupt (it is then recompiled and rewritten)."""
    try:
        lowered, digest, image = path.read_bytes().split(b'\n', 2)
        expected, size = digest.split(b' ')
    except (OSError, ValueError):
        return None
    if not lowered or len(image) != int(size) or hashlib.sha256(image).hexdigest().encode() != expected:
        return None
    return image, lowered.decode()


def binary(variant: Variant, arch: int) -> tuple[bytes, str]:
    """(compiled image, mangled kernel name) of one variant for ``arch``, from the memory or disk cache or NVRTC."""
    key = (variant, arch)
    with _lock:
        if key in _binaries:
            return _binaries[key]
    path = cache_dir() / f"{_cache_key(variant, arch)}.bin"
    entry = _read_cached(path)
    if entry is None:
        compiled = compile_variants([variant], arch)
        entry = (compiled.image, compiled.lowered[variant.name_expression])
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = f"{hashlib.sha256(entry[0]).hexdigest()} {len(entry[0])}".encode()
            tmp.write_bytes(b'\n'.join((entry[1].encode(), digest, entry[0])))
            os.replace(tmp, path)
        except OSError:  # a read-only or full cache only costs a recompile next time
            tmp.unlink(missing_ok=True)
    with _lock:
        _binaries[key] = entry
    return entry


def function(variant: Variant, device: int):
    """The loaded kernel of ``variant`` on CUDA device ``device`` (a cupy.cuda.Function)."""
    key = (variant, device)
    fn = _functions.get(key)
    if fn is None:
        import cupy
        with cupy.cuda.Device(device) as dev:
            image, lowered = binary(variant, int(dev.compute_capability))
            module = cupy.cuda.function.Module()
            module.load(image)
            fn = module.get_function(lowered)  # keeps the module loaded
        with _lock:
            fn = _functions.setdefault(key, fn)
    return fn
