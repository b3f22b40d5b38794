"""Keep freed memory in the process on glibc, so that training does not page-fault its temporaries in.

Why: a training step on the CPU allocates and frees [tokens, vocab] tensors many times (logits, their
softmax, the chunked loss's scratch: 30-120 MB each at an 8k vocabulary). glibc serves any block over
its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, and trims the heap's top
back to the system; every new block is then faulted in page by page and zeroed by the kernel. On our
2-core machines a TIE-KD step of the converged preset took ~470k minor faults and 0.7-1.2 s of system
time against ~3.6 s of user time (benchmarks/bench_malloc.py; docs/RESULTS.md, "Keeping freed memory").

What: glibc's own `mallopt` (man 3 mallopt), the run-time twin of its GLIBC_TUNABLES:
    M_MMAP_MAX = 0            never serve a block with its own mmap: everything comes from the heap
    M_TRIM_THRESHOLD = 2 GiB  do not hand a freed heap top back to the system below that size
    M_TOP_PAD = 256 MiB       grow the heap in large steps
The cost is resident memory: a process keeps its peak (+0.1-0.7 GB measured for `tiny` students).
The `tiekd` command applies it to its CPU training commands (train, distill, experiment).
The computed numbers do not change (checked bit for bit on training steps). tcmalloc or jemalloc via
LD_PRELOAD do the same job from outside; when one is preloaded, or GLIBC_TUNABLES already sets malloc
options (or the older MALLOC_* variables do), or TIEKD_MALLOC_TUNING=0, nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt's parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

# (mallopt takes a C int: 2 GiB - 1 is the largest trim threshold it can be given)
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1), (M_TOP_PAD, 256 << 20))
OPT_OUT = "TIEKD_MALLOC_TUNING"
_OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def _glibc():
    """The C library when it is glibc (it alone has gnu_get_libc_version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (musl and others lack it)
    except (OSError, AttributeError):
        return None
    return libc


def skip_reason() -> str | None:
    """Why the tuning is not applied in this process, or None when it is to be applied."""
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{OPT_OUT}=0"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(name.startswith("MALLOC_") for name in os.environ):
        return "GLIBC_TUNABLES or MALLOC_* variables set malloc options already"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _OTHER_ALLOCATORS):
        return "another allocator is preloaded"
    if _glibc() is None:
        return "the C library is not glibc"
    return None


# the commands that train on the CPU; translating, scoring or exporting gains little and would only keep
# its peak memory (e.g. a loaded teacher's CPU copy)
TRAINING_COMMANDS = ("train", "distill", "experiment")


def tune_for_command(command: str) -> bool:
    """keep_freed_memory() for a training command on a machine without a CUDA GPU; True when applied.
    On a GPU the [tokens, vocab] tensors live in PyTorch's CUDA caching allocator, not in malloc."""
    if command not in TRAINING_COMMANDS or skip_reason() is not None:
        return False
    import torch

    return False if torch.cuda.is_available() else keep_freed_memory()


def keep_freed_memory() -> bool:
    """Apply the settings above to this process's glibc malloc; True when they were applied."""
    if skip_reason() is not None:
        return False
    libc = _glibc()
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
