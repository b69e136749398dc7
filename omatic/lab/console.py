"""The guest's console: QEMU run with its console fed line by line to a reader, the
failure lines every guest is checked for, and what a failure shows of the console.

Shared by the lab's phases (omatic.lab.driver) and the hook lab (omatic.lab.hooks).
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from omatic.errors import InfraError, UserError
from omatic.lab.vm import kill

#: dmesg lines that fail the lab.
DMESG_BAD = ("Oops", "BUG:", "WARNING:", "Call Trace", "disagrees about version",
             "Unknown symbol")
#: Lines of the console log shown with a failure.
TAIL_LINES = 15


class NoBootImageError(InfraError):
    template = ("no boot image for kernel {release} ({path} is missing); install the Debian "
                "package linux-image-{release}")


def console_tail(log: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    kept = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    return "\n".join("  " + line for line in kept[-lines:]) or "  (the console is empty)"


class ConsoleReader(Protocol):
    """What run_guest drives: a reader of the guest's console lines."""

    #: When QEMU started (set by run_guest).
    start: float
    #: Whether the guest said it ended.
    ended: bool

    def feed(self, line: str) -> None: ...


def run_guest(cmd: list[str], session: ConsoleReader, log: Path,
              timeout: float) -> tuple[int | None, str, float]:
    """Run QEMU, feeding its console to `session` until the guest ends, QEMU exits or
    `timeout` passes. Returns (QEMU's exit status or None if it was killed, QEMU's
    stderr, seconds). QEMU never outlives this call."""
    start = time.monotonic()
    session.start = start
    lines: queue.Queue[bytes | None] = queue.Queue()
    stderr: list[bytes] = []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout, proc.stderr

        def pump() -> None:
            for raw in out:
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        threading.Thread(target=lambda: stderr.append(err.read()), daemon=True).start()
        with open(log, "wb") as console:
            while not session.ended:
                left = start + timeout - time.monotonic()
                if left <= 0:
                    break
                try:
                    raw = lines.get(timeout=min(left, 1.0))
                except queue.Empty:
                    continue
                if raw is None:
                    break
                console.write(raw)
                console.flush()
                session.feed(raw.decode(errors="replace").rstrip("\r\n"))
        if session.ended:  # the guest powers off by itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        status = proc.poll()
    finally:
        kill(proc)
    return status, b"".join(stderr).decode(errors="replace"), time.monotonic() - start


def check_timeout(seconds: float) -> None:
    """A guest needs seconds to boot: a timeout under one is a mistake, not a wish."""
    if not seconds >= 1:
        raise UserError(f"--timeout {seconds:g}: a guest needs at least 1 second (the "
                        "default is 120)")


@contextlib.contextmanager
def log_kept_only_if(keep: bool, log: Path) -> Iterator[None]:
    """An interrupted guest (Ctrl-C) leaves no console log unless asked to keep it: it
    is kept on failure or with --keep, and an interruption is neither."""
    try:
        yield
    except KeyboardInterrupt:
        if not keep:
            log.unlink(missing_ok=True)
        raise
