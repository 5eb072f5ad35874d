"""A disk that fills up, without root: a file size limit (RLIMIT_FSIZE) on a process. A write
past it fails with EFBIG, as one on a full disk fails with ENOSPC, and nothing else changes;
raising the limit again is the space coming back."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path


def ignores_sigxfsz(pid: int) -> bool:
    """Whether the process ignores SIGXFSZ (CPython does from start-up): otherwise a write over
    the limit kills it instead of failing."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGXFSZ - 1) & 1)
    return False


@contextlib.contextmanager
def file_size_limit(limit_bytes: int, pid: int = 0) -> Iterator[None]:
    """No file of process `pid` (0: this one) grows past `limit_bytes` until the block ends.
    Only the soft limit moves, so that a process without privileges can raise it back."""
    assert ignores_sigxfsz(pid or os.getpid()), "SIGXFSZ would kill it"
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # the process died meanwhile
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
