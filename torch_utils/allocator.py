"""Host memory allocator settings for the command-line scripts.

On Linux, glibc's malloc serves large blocks (above a threshold that grows only up to 32 MB) with
fresh ``mmap`` pages and returns them to the kernel on ``free``; it also trims the top of the heap
when more than a little is free. A CPU forward/backward pass allocates and frees tensors of tens of
MB many times per image, so the process keeps asking the kernel for new pages, which the kernel
zeroes: 20-40 % of ``calc_metrics.py``'s CPU time and ~7 % of ``train.py``'s went to the kernel
(docs/benchmarks.md, "Host allocator"). Raising both thresholds keeps freed memory in the process
for reuse; the peak resident size stays about the same, since the blocks are needed again.

Only the scripts call :func:`retain_freed_memory` (in their ``__main__`` block): the process is
theirs. Importing the library changes nothing.
"""
from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameter numbers (malloc.h) and the largest value its int argument takes.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_LIMIT = 2 ** 31 - 1
_FALLBACK_MMAP = 32 * 2 ** 20


def retain_freed_memory(libc_name: str | None = None) -> bool:
    """Tell glibc to keep freed blocks of up to 2 GB for reuse instead of returning them to the kernel.

    Returns True when both settings were accepted, False where they do not apply (not Linux, not
    glibc, or the C library refused them); it never raises. ``libc_name``: for tests.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(libc_name or "libc.so.6")   # glibc's soname; musl has none such
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # no glibc: nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success and 0 when it refuses a value: some glibc versions cap the mmap
    # threshold at 32 MB, which still helps (the dynamic threshold starts at 128 kB).
    mmap_ok = mallopt(M_MMAP_THRESHOLD, _LIMIT) == 1 or mallopt(M_MMAP_THRESHOLD, _FALLBACK_MMAP) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, _LIMIT) == 1
    return mmap_ok and trim_ok
