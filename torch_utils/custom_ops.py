"""Building, caching and vetting the custom CUDA ops (architecture.md, "Every custom op has a pure-PyTorch twin").

* :func:`get_extension` JIT-compiles an op's ``.cpp`` + ``.cu`` sources with
  ``torch.utils.cpp_extension.load`` (ninja) on first use. The build folder is keyed by a sha256 of
  the sources and headers, the compiler flags, the torch and CUDA versions and the GPU architecture,
  so an edited kernel or a different GPU never picks up a stale binary. The architecture is passed
  as ``-gencode`` in ``extra_cuda_cflags`` (process-wide environment variables such as
  ``TORCH_CUDA_ARCH_LIST`` are read by torch but never written here). Results, failures included,
  are cached per process. A failed build is a ``RuntimeError`` that names nvcc, CUDA_HOME and ninja.
* :class:`LazyKernel` is what an op registers with :func:`torch_utils.ops.dispatch.register_cuda_kernel`:
  on the first call for CUDA tensors it builds the extension and runs the op's self-check (the
  kernel against the pure-PyTorch reference on tiny inputs, forward and backward). If either fails
  it warns once and reports itself unavailable, so impl='auto' uses the reference.
* :func:`compare_with_reference` is the self-check's comparison, written so it can be exercised on
  CPU with any candidate function (tests inject a deliberately wrong one).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from torch_utils.ops.dispatch import register_cuda_kernel, resolve_impl

OPS_DIR = Path(__file__).resolve().parent / "ops"
BUILD_SUBDIR = "spherehead"
# Host flags for the bindings and device flags for the kernels. No --use_fast_math: the kernels
# must agree with the reference's atan2/sqrt/cos to float32 rounding, and flushing denormals would
# change which points count as lying exactly on a sphere's polar axis.
EXTRA_CFLAGS: Tuple[str, ...] = ("-O3",)
EXTRA_CUDA_CFLAGS: Tuple[str, ...] = ("-O3",)

_cache: Dict[str, Any] = {}        # build key -> loaded module, or the RuntimeError of a failed build
_cache_lock = threading.Lock()


# ----------------------------------------------------------------------------- build keys

def arch_flags(capability: Tuple[int, int]) -> List[str]:
    """nvcc flags that compile SASS for exactly one GPU architecture, e.g. (9, 0) -> sm_90."""
    major, minor = capability
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]


def build_key(name: str, sources: Sequence[os.PathLike], headers: Sequence[os.PathLike] = (),
              flags: Sequence[str] = (), *, torch_version: Optional[str] = None,
              cuda_version: Optional[str] = None, capability: Optional[Tuple[int, int]] = None) -> str:
    """sha256 (hex) over the op name, every source and header (name and bytes), the flags, the torch and
    CUDA versions and the GPU capability. Any change to one of them gives a new build folder."""
    h = hashlib.sha256()

    def feed(tag: str, data: bytes) -> None:
        h.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    feed("name", name.encode())
    for path in list(sources) + list(headers):
        path = Path(path)
        feed("file:" + path.name, path.read_bytes())
    feed("flags", "\n".join(flags).encode())
    feed("torch", (torch_version if torch_version is not None else torch.__version__).encode())
    feed("cuda", str(cuda_version if cuda_version is not None else torch.version.cuda).encode())
    feed("arch", repr(tuple(capability) if capability is not None else None).encode())
    return h.hexdigest()


def build_root() -> Path:
    """$TORCH_EXTENSIONS_DIR (read, never set) or torch's default extension root, + 'spherehead'."""
    from torch.utils import cpp_extension
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / BUILD_SUBDIR


def toolchain_report() -> str:
    """One line naming what the JIT build needs and where (or whether) it was found."""
    from torch.utils import cpp_extension
    return (f"nvcc: {shutil.which('nvcc') or 'not on PATH'}; "
            f"CUDA_HOME: {cpp_extension.CUDA_HOME or 'not found (set CUDA_HOME to the CUDA toolkit)'}; "
            f"ninja: {shutil.which('ninja') or 'not on PATH (pip install ninja)'}; "
            f"torch {torch.__version__} built with CUDA {torch.version.cuda}")


def _build_error(name: str, why: str) -> RuntimeError:
    return RuntimeError(
        f"building the CUDA extension '{name}' failed: {why}\n"
        f"The custom ops are compiled on first use with nvcc from CUDA_HOME, driven by ninja "
        f"({toolchain_report()}). Use impl='ref' or set SPHEREHEAD_OPS=ref to run the pure-PyTorch reference.")


# ----------------------------------------------------------------------------- building

def get_extension(name: str, sources: Sequence[str], headers: Sequence[str] = (),
                  extra_cuda_cflags: Sequence[str] = (), extra_cflags: Sequence[str] = (),
                  verbose: bool = False) -> Any:
    """Build (or load from the cache) the extension ``name`` from ``sources`` for the current GPU.

    ``sources`` / ``headers`` are file names in torch_utils/ops/ or absolute paths. Raises
    RuntimeError (naming nvcc / CUDA_HOME / ninja) when CUDA, the toolkit or the build fails; the
    failure is cached too, so a broken toolchain costs one attempt per process.
    """
    src = [Path(s) if os.path.isabs(s) else OPS_DIR / s for s in sources]
    hdr = [Path(s) if os.path.isabs(s) else OPS_DIR / s for s in headers]
    if not torch.cuda.is_available():
        raise _build_error(name, "torch.cuda.is_available() is False (no GPU, or a CPU-only torch build)")
    capability = torch.cuda.get_device_capability()
    cuda_flags = list(EXTRA_CUDA_CFLAGS) + arch_flags(capability) + list(extra_cuda_cflags)
    host_flags = list(EXTRA_CFLAGS) + list(extra_cflags)
    key = build_key(name, src, hdr, host_flags + ["--"] + cuda_flags, capability=capability)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _build(name, key, src, host_flags, cuda_flags, verbose)
            _cache[key] = cached
    if isinstance(cached, RuntimeError):
        raise cached
    return cached


def _build(name: str, key: str, sources: List[Path], host_flags: List[str], cuda_flags: List[str], verbose: bool):
    from torch.utils import cpp_extension
    if cpp_extension.CUDA_HOME is None:
        return _build_error(name, "CUDA_HOME is not set and no nvcc was found")
    if shutil.which("ninja") is None:
        return _build_error(name, "ninja is not installed")
    build_dir = build_root() / f"{name}-{key[:16]}"
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        # A name unique to the key: torch caches loaded modules by name within a process.
        return cpp_extension.load(name=f"spherehead_{name}_{key[:16]}", sources=[str(s) for s in sources],
                                  extra_cflags=host_flags, extra_cuda_cflags=cuda_flags,
                                  build_directory=str(build_dir), verbose=verbose, with_cuda=True)
    except Exception as exc:  # compiler errors arrive as RuntimeError/CalledProcessError/OSError/ImportError
        return _build_error(name, f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- self-check

def compare_with_reference(candidate: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                           inputs: Sequence[torch.Tensor], atol: float, rtol: float = 0.0,
                           grad_atol: Optional[float] = None, grad_rtol: Optional[float] = None,
                           seed: int = 0) -> Optional[str]:
    """Compare ``candidate(*inputs)`` with ``reference(*inputs)``: outputs, then the gradients of
    ⟨output, r⟩ for a fixed random r with respect to every floating-point input. Returns None when
    all agree within ``|a − b| ≤ atol + rtol·|b|`` (``grad_atol``/``grad_rtol`` for the gradients,
    defaulting to the output tolerances), otherwise a one-line description of the worst mismatch.
    Uses its own random generator: the global RNG is untouched.
    """
    grad_atol = atol if grad_atol is None else grad_atol
    grad_rtol = rtol if grad_rtol is None else grad_rtol

    def leaves():
        return [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]

    with autograd_enabled():
        a_in, b_in = leaves(), leaves()
        a, b = candidate(*a_in), reference(*b_in)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output shape/dtype {tuple(a.shape)}/{a.dtype}, reference {tuple(b.shape)}/{b.dtype}"
        problem = _mismatch("output", a, b, atol, rtol)
        if problem:
            return problem
        gen = torch.Generator(device="cpu").manual_seed(seed)
        r = torch.randn(b.shape, generator=gen, dtype=torch.float32).to(device=b.device, dtype=b.dtype)
        wrt = [i for i, x in enumerate(b_in) if x.requires_grad]
        ga = torch.autograd.grad(a, [a_in[i] for i in wrt], r, allow_unused=True)
        gb = torch.autograd.grad(b, [b_in[i] for i in wrt], r, allow_unused=True)
        for i, x, y in zip(wrt, ga, gb):
            x = torch.zeros_like(a_in[i]) if x is None else x
            y = torch.zeros_like(b_in[i]) if y is None else y
            problem = _mismatch(f"gradient of input {i}", x, y, grad_atol, grad_rtol)
            if problem:
                return problem
    return None


def _mismatch(what: str, a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> Optional[str]:
    a, b = a.detach().double(), b.detach().double()
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)):
        return f"{what}: non-finite values differ from the reference"
    finite = torch.isfinite(b)
    err = torch.where(finite, (a - b).abs() - rtol * b.abs(), torch.zeros_like(a))
    worst = float(err.max()) if err.numel() else 0.0
    if worst > atol:
        return f"{what}: max |diff| exceeds the tolerance (atol {atol:g}, rtol {rtol:g}) by {worst - atol:.3g}"
    return None


@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Self-checks run wherever the op is first called: under no_grad, inference_mode or autocast too."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        stack.enter_context(torch.autocast("cpu", enabled=False))
        yield


class LazyKernel:
    """A CUDA kernel that is built and vetted on first use.

    ``build()`` returns the compiled module (raising on failure); ``self_check(module)`` returns None
    when the kernel agrees with the reference, else a description of the disagreement. Register
    :meth:`is_available` with dispatch: it is only called for CUDA tensors, so nothing is compiled
    on CPU-only machines. After a failure the kernel stays unavailable for the process (one warning).
    """

    def __init__(self, op: str, build: Callable[[], Any], self_check: Callable[[Any], Optional[str]]):
        self.op = op
        self._build = build
        self._self_check = self_check
        self._lock = threading.RLock()
        self._state: Optional[bool] = None
        self.module: Any = None          # set once built (before the self-check runs)
        self.failure: Optional[str] = None

    def is_available(self) -> bool:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    self._state = self._try()
        return self._state

    def _try(self) -> bool:
        try:
            self.module = self._build()
        except Exception as exc:
            return self._refuse(str(exc))
        try:
            problem = self._self_check(self.module)
        except Exception as exc:
            problem = f"the self-check raised {type(exc).__name__}: {exc}"
        if problem:
            return self._refuse(f"self-check against the pure-PyTorch reference failed: {problem}")
        return True

    def _refuse(self, reason: str) -> bool:
        self.failure = reason
        warnings.warn(f"{self.op}: the CUDA kernel is not used, falling back to the pure-PyTorch reference. "
                      f"{reason}", RuntimeWarning, stacklevel=4)
        return False

    def reset(self) -> None:
        """Forget the outcome (tests; or after fixing the toolchain in a long-lived process)."""
        with self._lock:
            self._state, self.module, self.failure = None, None, None

    def wanted(self, impl: str, tensor, problem: Callable[[], Optional[str]]) -> bool:
        """Whether this call runs the kernel. ``problem()`` names an input the kernel cannot take
        (None: it can); that is an error when the caller insisted on the kernel (impl='cuda', or
        SPHEREHEAD_OPS=cuda under 'auto'), else a quiet fall back to the reference."""
        try:
            which = resolve_impl(self.op, impl, tensor)
        except RuntimeError as exc:
            raise self.explain(exc) from None
        if which != "cuda":
            return False
        reason = problem()
        if reason is None:
            return True
        strict = impl == "cuda" or (impl == "auto" and os.environ.get("SPHEREHEAD_OPS", "").strip().lower() == "cuda")
        if strict:
            raise RuntimeError(f"{self.op}: impl='cuda' requested but the CUDA kernel cannot take {reason}")
        return False

    def explain(self, exc: RuntimeError) -> RuntimeError:
        """``exc`` (dispatch's impl='cuda' error) with the reason the kernel is unavailable appended."""
        if self.failure:
            return RuntimeError(f"{exc}\nReason: {self.failure}")
        return exc


def op_kernel(op: str, self_check: Callable[[Callable, torch.device], Optional[str]],
              candidate: Callable) -> LazyKernel:
    """The kernel of ``torch_utils/ops/{op}.cpp`` + ``{op}.cu`` (headers ``{op}.h``, ``elem.h``, ``bindings.h``),
    vetted by ``self_check(candidate, cuda device)`` and registered with dispatch."""
    def build():
        return get_extension(op, sources=[f"{op}.cpp", f"{op}.cu"], headers=[f"{op}.h", "elem.h", "bindings.h"])

    def check(module) -> Optional[str]:
        return self_check(candidate, torch.device("cuda", torch.cuda.current_device()))

    kernel = LazyKernel(op, build, check)
    register_cuda_kernel(op, kernel.is_available)
    return kernel


# ----------------------------------------------------------------------------- op-level overrides

@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Within the block, impl='auto' runs every registered op's reference (benchmarks compare paths
    with it). Swaps the availability checks in dispatch's registry and restores them on exit; the
    process environment is not touched."""
    from .ops import dispatch
    saved = dict(dispatch._cuda_available)
    try:
        for op in saved:
            dispatch.register_cuda_kernel(op, lambda: False)
        yield
    finally:
        dispatch._cuda_available.clear()
        dispatch._cuda_available.update(saved)


def cuda_ops_status() -> Dict[str, str]:
    """op -> 'available' / 'unavailable: <reason>' / 'not checked' (nothing built yet), without building."""
    from .ops import bias_act, spherical_sample, upfirdn2d
    out = {}
    for mod in (bias_act, spherical_sample, upfirdn2d):
        kernel: LazyKernel = mod._KERNEL
        state = kernel._state
        out[kernel.op] = ("not checked" if state is None else "available" if state else
                          f"unavailable: {kernel.failure}")
    return out
