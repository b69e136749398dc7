"""Commands run as a user runs them: a subprocess, optionally with a read-only folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

#: linux/fs.h: the inode flags ioctls, and the flag that makes a folder unwritable.
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only for whoever runs a command meanwhile: for root, whom a folder's
    mode does not stop, its immutable flag (ext4, xfs, btrfs; tmpfs from 6.0), which
    needs no mount nor namespace (a chroot refuses new user namespaces); for others, mode
    0555. Undone on the way out, so the test's folder can be removed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_IMMUTABLE_FL))
        try:
            yield
        finally:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags))
    finally:
        os.close(fd)


def as_user(tmp_path: Path, *argv: str, read_only_dir: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    """`pfq-omatic ARGV` as a user runs it, in `tmp_path`; with `read_only_dir`, that
    folder is read-only meanwhile (see read_only)."""
    with read_only(read_only_dir) if read_only_dir else contextlib.nullcontext():
        return subprocess.run([sys.executable, "-m", "omatic", *argv], cwd=tmp_path,
                              capture_output=True, text=True, check=False, timeout=300)


def one_line(run: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert all(w in run.stderr for w in words), run.stderr
