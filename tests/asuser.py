"""Commands run as a user runs them: a subprocess, optionally with a read-only folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def as_user(tmp_path: Path, *argv: str, read_only: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    """`pfq-omatic ARGV` as a user runs it; with `read_only`, that folder is read-only for
    it: a read-only tmpfs mounted over it in a mount namespace of its own when root (for
    whom a folder's mode is no obstacle), its mode 0555 otherwise."""
    cmd = [sys.executable, "-m", "omatic", *argv]
    if read_only is not None and os.geteuid() == 0:
        cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"',
               str(read_only), *cmd]
    elif read_only is not None:
        read_only.chmod(0o555)
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False,
                          timeout=300)


def one_line(run: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert all(w in run.stderr for w in words), run.stderr
