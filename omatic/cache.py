"""The cache's place and the locks that keep concurrent runs of pfq-omatic apart.

Standard library only: `pfq-omatic env` runs before the virtualenv exists (CI makes a
pristine system with the host's python3 alone).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def cache_root() -> Path:
    """$XDG_CACHE_HOME/pfq-omatic (~/.cache/pfq-omatic)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pfq-omatic"


@contextlib.contextmanager
def file_lock(path: Path, on_wait: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path`; print `on_wait` if someone else has it.

    The lock file exists only while someone holds or waits for it: its holder unlinks it
    before letting go, and a waiter that wakes up holding an unlinked file tries again on
    the new one. So a run, whatever its outcome, leaves no lock file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a")  # noqa: SIM115 - closed below, after the unlock
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    print(on_wait, flush=True)
                    on_wait = None
                fcntl.flock(handle, fcntl.LOCK_EX)
            if _same_file(handle, path):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # the holder before us removed it: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def made_dirs(path: Path) -> Iterator[Path]:
    """Create `path` and its missing parents; on the way out remove those of them that
    this call created and that are still empty, so a failed run leaves no empty folders."""
    created = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        created.append(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def file_mode() -> int:
    """The mode a new file gets here: 0666 less the process's umask, read from
    /proc/self/status (os.umask() can only be read by setting it, which would race the
    matrix's threads)."""
    try:
        match = re.search(r"^Umask:\s*([0-7]+)$", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        match = None
    return 0o666 & ~int(match[1], 8) if match else 0o644


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all (a temporary file beside it, flushed, then renamed),
    with the mode any new file gets (the umask's), not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
