"""Compile generated C with the system compiler, cache the library on disk, and call it with ctypes.

No torch headers are needed, so a kernel compiles in a fraction of a second. OpenMP code binds to the
libgomp torch has already loaded, so kernels share torch's thread pool and `torch.set_num_threads`.

The disk cache ($OPTIMLAB_CACHE_DIR, default ~/.cache/optimlab) is shared by processes and must never
poison one: a library is written atomically and recorded with its SHA-256 only after a successful
build, and is loaded only when the file on disk still has that checksum (a truncated or foreign file
is rebuilt, never mapped). An unusable cache directory falls back to a private temporary one.

Two failures are told apart:
* `CompilerUnavailable`: no usable compiler here (none found, one that hangs, one that makes no
  library). The caller falls back to the foreach path and warns once.
* `KernelBuildError`: a working compiler rejected the generated code. That is optimlab's bug: it is
  raised, so the tests catch it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

# -fopenmp-simd: `#pragma omp simd` reductions vectorise even where the OpenMP runtime is unavailable.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd", "-shared", "-fPIC"]
# Below this many elements a call runs on one thread: waking the pool would cost more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16
# Shared-library magic numbers: ELF (Linux) and Mach-O (macOS, 64-bit, either byte order).
LIBRARY_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf")

compiles = 0  # kernels compiled by this process (tests check that a changing lr compiles nothing)


class CompilerUnavailable(RuntimeError):
    """No usable C compiler: the fused path cannot be built here."""


class KernelBuildError(RuntimeError):
    """A working compiler rejected generated code: a bug in optimlab's code generator."""


def compile_timeout() -> float:
    return float(os.environ.get("OPTIMLAB_CC_TIMEOUT", "120"))


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def cache_dir() -> Path:
    root = os.environ.get("OPTIMLAB_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "optimlab"


@functools.cache
def usable_cache_dir(wanted: Path) -> Path:
    """`wanted` if this process can create files in it; else a private temporary folder (one warning)."""
    try:
        wanted.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=wanted, prefix=".probe-"):
            pass
        return wanted
    except OSError as err:
        private = Path(tempfile.mkdtemp(prefix="optimlab-kernels-"))
        _warn(f"optimlab: kernel cache {wanted} is unusable ({err.strerror or err}); using {private} "
              "for this process (set OPTIMLAB_CACHE_DIR to a writable folder)")
        return private


def _run(command: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=compile_timeout(), **kw)


@functools.cache
def compiler() -> tuple[str, tuple[str, ...]]:
    """The C compiler to use and its extra flags (-fopenmp where it works): the first candidate that
    builds a real shared library from a probe."""
    configured = os.environ.get("OPTIMLAB_CC")
    if configured and not shutil.which(configured):
        _warn(f"optimlab: OPTIMLAB_CC={configured!r} is not an executable compiler; trying cc, gcc, clang")
    tried = []
    for name in dict.fromkeys([configured, os.environ.get("CC"), "cc", "gcc", "clang"]):
        found = name and shutil.which(name)
        if not found:
            continue
        for extra in (("-fopenmp",), ()):
            problem = _probe(found, extra)
            if problem is not None and problem.startswith("no answer"):
                break  # a compiler that hangs once will hang again: do not wait twice
            if problem is None:
                if tried and configured:
                    _warn(f"optimlab: OPTIMLAB_CC={configured!r} is not usable ({tried[0]}); using {found}")
                return found, extra
        tried.append(f"{found}: {problem}")
    detail = "; ".join(tried) or "none found"
    raise CompilerUnavailable(f"no usable C compiler ({detail}); set OPTIMLAB_CC; the fused path needs one")


def _probe(cc: str, extra: tuple) -> str | None:
    """What is wrong with building a shared library with `cc`, or None."""
    source = ("int f(void){int s=0;\n#pragma omp parallel for reduction(+:s)\n"
              "for(int i=0;i<4;i++)s+=i;return s;}\n")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.so"
        try:
            done = _run([cc, *FLAGS, *extra, "-x", "c", "-", "-o", str(out)], input=source)
        except subprocess.TimeoutExpired:
            return f"no answer in {compile_timeout():.0f} s"
        except OSError as err:
            return str(err)
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or ["failed"])[-1]
        return None if _is_library(out) else "made no shared library"


def _is_library(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in LIBRARY_MAGIC
    except OSError:
        return False


@functools.cache
def _machine_key() -> str:
    """What a cached library depends on besides its source: compiler, flags, CPU features."""
    cc, extra = compiler()
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), cpu)
    except OSError:
        pass
    version = _run([cc, "--version"]).stdout
    return "\n".join([cc, version, " ".join([*FLAGS, *extra]), cpu, platform.machine()])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(library: Path, checksum: Path) -> bool:
    """The library exists and is exactly what a successful build recorded."""
    try:
        return checksum.read_text().strip() == _digest(library)
    except OSError:
        return False


def _write_atomically(path: Path, data: bytes) -> None:
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _build(source: str, library: Path) -> None:
    """Compile `source` into `library` with its checksum beside it; raise if it cannot be done."""
    global compiles
    cc, extra = compiler()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kernel.so"
        try:
            done = _run([cc, *FLAGS, *extra, "-x", "c", "-", "-o", str(out)], input=source)
        except subprocess.TimeoutExpired:
            raise CompilerUnavailable(f"{cc} did not finish a kernel in {compile_timeout():.0f} s "
                                      "(OPTIMLAB_CC_TIMEOUT)") from None
        if done.returncode != 0:
            raise KernelBuildError(f"{cc} rejected a generated kernel (an optimlab bug; please report it):\n"
                                   f"{done.stderr[-2000:]}")
        if not _is_library(out):
            raise CompilerUnavailable(f"{cc} reported success but made no shared library")
        data = out.read_bytes()
    _write_atomically(library.with_suffix(".c"), source.encode())  # for readers; never loaded
    _write_atomically(library, data)
    _write_atomically(library.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
    compiles += 1


def load(source: str) -> ctypes.CDLL:
    """The compiled library for `source`, from the disk cache if verified, else freshly built."""
    digest = hashlib.sha256((_machine_key() + source).encode()).hexdigest()[:24]
    for attempt in range(2):
        folder = usable_cache_dir(cache_dir()) if attempt == 0 else _private_dir()
        library = folder / f"kernel-{digest}.so"
        checksum = library.with_suffix(".sha256")
        try:
            if not _verified(library, checksum):
                _build(source, library)
            break
        except OSError as err:  # the folder stopped being writable (full disk, permissions)
            if attempt == 1:
                raise CompilerUnavailable(f"cannot write a kernel anywhere ({err})") from err
            _warn(f"optimlab: cannot write to the kernel cache {folder} ({err.strerror or err}); "
                  "using a private temporary folder")
    lib = ctypes.CDLL(str(library))
    lib.step.restype = ctypes.c_int
    lib.step.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib


@functools.cache
def _private_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="optimlab-kernels-"))


class Kernel:
    """A compiled fused step for one traced rule and one storage dtype."""

    def __init__(self, source: str, n_arrays: int, scalar_names: list[str]):
        self.source = source
        self.n_arrays = n_arrays
        self.scalar_names = scalar_names
        self.lib = load(source)

    def __call__(self, arrays: list[list[torch.Tensor]], h, extents: list[int] | None = None,
                 extra: list[torch.Tensor] = ()) -> None:
        """arrays[a][t]: tensor t of array a (θ, g, states), all contiguous, on the CPU; `extents`: each
        tensor's rows, then each one's columns, for kernels with row and column values, then any further
        integers the kernel reads (bf16 rounding keys); `extra`: one more tensor per tensor (Kahan)."""
        self.launch(self.table(arrays, extents, extra), h)

    def table(self, arrays: list[list[torch.Tensor]], extents: list[int] | None = None,
              extra: list[torch.Tensor] = ()) -> Table:
        """The pointers and sizes a call passes (see __call__), as the C function takes them."""
        nt = len(arrays[0])
        pointers = (ctypes.c_void_p * (nt * self.n_arrays + len(extra)))()
        pointers[:] = [x.data_ptr() for row in zip(*arrays) for x in row] + [x.data_ptr() for x in extra]
        sizes = [x.numel() for x in arrays[0]]
        numel = (ctypes.c_int64 * (nt + len(extents or ())))(*sizes, *(extents or ()))
        return Table(nt, pointers, numel, sum(sizes))

    def launch(self, table: Table, h) -> None:
        """One step over the tensors of `table`, with the scalars of h."""
        scalars = (ctypes.c_double * max(len(self.scalar_names), 1))(
            *[float(getattr(h, s)) for s in self.scalar_names])
        threads = torch.get_num_threads() if table.elements >= PARALLEL_MIN_ELEMENTS else 1
        if self.lib.step(table.nt, table.pointers, table.numel, scalars, threads) != 0:
            raise MemoryError("fused kernel could not allocate its work tables")


@dataclasses.dataclass
class Table:
    """A call's arguments besides the scalars: the tensor count, each array's pointer per tensor (tensor
    by tensor), the sizes (and any further integers), and the elements in all (which decide the threads)."""

    nt: int
    pointers: ctypes.Array
    numel: ctypes.Array
    elements: int
