"""Compile generated C with the system compiler, cache the library on disk, and call it with ctypes.

No torch headers are needed, so a kernel compiles in a fraction of a second. OpenMP code binds to the
libgomp torch has already loaded, so kernels share torch's thread pool and `torch.set_num_threads`.
Libraries are cached under $OPTIMLAB_CACHE_DIR (default ~/.cache/optimlab), keyed by the source, the
compiler and the CPU, and written atomically so concurrent processes can share the cache.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

# -fopenmp-simd: `#pragma omp simd` reductions vectorise even where the OpenMP runtime is unavailable.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd", "-shared", "-fPIC"]
# Below this many elements a call runs on one thread: waking the pool would cost more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16

compiles = 0  # kernels compiled by this process (tests check that a changing lr compiles nothing)


class CompilerUnavailable(RuntimeError):
    """No working C compiler: the fused path cannot be built here."""


def cache_dir() -> Path:
    root = os.environ.get("OPTIMLAB_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "optimlab"


@functools.cache
def compiler() -> str:
    for name in [os.environ.get("OPTIMLAB_CC"), os.environ.get("CC"), "cc", "gcc", "clang"]:
        if name and shutil.which(name):
            return shutil.which(name)
    raise CompilerUnavailable("no C compiler found (set OPTIMLAB_CC); the fused path needs one")


@functools.cache
def _machine_key() -> str:
    """What a cached library depends on besides its source: compiler, flags, CPU features."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), cpu)
    except OSError:
        pass
    version = subprocess.run([compiler(), "--version"], capture_output=True, text=True).stdout
    return "\n".join([version, " ".join(FLAGS), cpu, platform.machine()])


@functools.cache
def _openmp_flag() -> list[str]:
    """-fopenmp where the compiler supports it (gcc does; Apple clang does not)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("int f(void){int s=0;\n#pragma omp parallel for reduction(+:s)\nfor(int i=0;i<4;i++)s+=i;return s;}\n")
        ok = subprocess.run([compiler(), *FLAGS, "-fopenmp", str(src), "-o", str(Path(tmp) / "p.so")],
                            capture_output=True).returncode == 0
    return ["-fopenmp"] if ok else []


def load(source: str) -> ctypes.CDLL:
    """The compiled library for `source`, from the disk cache or freshly built."""
    global compiles
    digest = hashlib.sha256((_machine_key() + source).encode()).hexdigest()[:24]
    folder = cache_dir()
    library = folder / f"kernel-{digest}.so"
    if not library.exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"kernel-{digest}.c").write_text(source)
        fd, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
        os.close(fd)
        command = [compiler(), *FLAGS, *_openmp_flag(), "-x", "c", "-", "-o", partial]
        done = subprocess.run(command, input=source, capture_output=True, text=True)
        if done.returncode != 0:
            os.unlink(partial)
            raise CompilerUnavailable(f"compiling a fused kernel failed:\n{done.stderr[-2000:]}")
        os.replace(partial, library)  # atomic: another process sees the whole library or none
        compiles += 1
    lib = ctypes.CDLL(str(library))
    lib.step.restype = ctypes.c_int
    lib.step.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib


class Kernel:
    """A compiled fused step for one traced rule and one storage dtype."""

    def __init__(self, source: str, n_arrays: int, scalar_names: list[str]):
        self.source = source
        self.n_arrays = n_arrays
        self.scalar_names = scalar_names
        self.lib = load(source)

    def __call__(self, arrays: list[list[torch.Tensor]], h, extents: list[int] | None = None) -> None:
        """arrays[a][t]: tensor t of array a (θ, g, states), all contiguous, on the CPU; `extents`: each
        tensor's rows, then each one's columns, for kernels with row and column values."""
        nt = len(arrays[0])
        pointers = (ctypes.c_void_p * (nt * self.n_arrays))()
        pointers[:] = [x.data_ptr() for row in zip(*arrays) for x in row]
        sizes = [x.numel() for x in arrays[0]]
        numel = (ctypes.c_int64 * (nt + len(extents or ())))(*sizes, *(extents or ()))
        scalars = (ctypes.c_double * max(len(self.scalar_names), 1))(*[float(getattr(h, s)) for s in self.scalar_names])
        threads = torch.get_num_threads() if sum(sizes) >= PARALLEL_MIN_ELEMENTS else 1
        if self.lib.step(nt, pointers, numel, scalars, threads) != 0:
            raise MemoryError("fused kernel could not allocate its work tables")
