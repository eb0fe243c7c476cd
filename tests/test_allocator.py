"""torch_utils.allocator: the scripts' glibc malloc settings keep freed memory for reuse."""
import subprocess
import sys
import textwrap

import pytest

from torch_utils.allocator import retain_freed_memory


def _glibc() -> bool:
    import platform
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


# Mallocs 256 MB, touches every page, frees it and prints the resident size (MB) it lost by the free.
_PROBE = textwrap.dedent("""
    import ctypes, os, sys
    sys.path.insert(0, {root!r})
    from torch_utils.allocator import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory() is True   # both settings accepted
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    n = 256 * 2**20
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    before = rss()
    libc.free(p)
    print(before - rss())
""")


@pytest.mark.skipif(not _glibc(), reason="glibc malloc settings")
def test_freed_blocks_stay_in_the_process():
    import pathlib
    script = _PROBE.format(root=str(pathlib.Path(__file__).resolve().parents[1]))

    def released_mb(mode):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        return float(out.stdout)

    assert released_mb("default") > 200     # glibc's default: a 256 MB block goes back to the kernel
    assert released_mb("retain") < 10       # kept for the next allocation


def test_no_c_library_is_not_an_error():
    assert retain_freed_memory("libno-such-library-spherehead.so") is False

