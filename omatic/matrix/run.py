"""`pfq-omatic matrix`: every driver on every kernel, each cell a build + verify (+ lab).

A cell is the same command a person would type (`pfq-omatic build DRIVER --kernel K`, then
`pfq-omatic lab ...`), run as a process of its own with its output in the cell's log: one
cell's failure or crash never stops the others, Ctrl-C kills the running ones whole, and
the reproducer shown is exactly what ran. Kernels are resolved first, one at a time (a
kernel of another suite may need its system made); cells then run in parallel, as many
as the machine has cores, each with its share of them for make.

A cell's status says whose fault it is: `pass`; `fail` (the driver did not build, verify
or prove itself); `error` (the infrastructure failed: network, QEMU, a missing tool);
`skip` (that kernel has no such driver). A failure listed in the known-failures file is
expected: shown, not fatal. Each finished cell is written at once (`cells/KERNEL/DRIVER.json`)
with a key of everything it depends on; a rerun with the same key reuses it, and the
reports (omatic.matrix.report) are rewritten from all cells after each one finishes, so an
interrupted matrix leaves every finished cell's results and no half-written one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import functools
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic import __version__
from omatic.build.pipeline import hash_files, kmod_key
from omatic.cache import write_atomic
from omatic.data import DRIVERS_DIR, HOOKMOD_DIR, PATCHES_DIR, PCAP_MODULE_DIR
from omatic.errors import FAILURE_ENV, UserError
from omatic.kernels.kernel import Kernel
from omatic.matrix.report import Cell, write_outputs

#: Errors that mean "this kernel does not have that driver".
_SKIP_ERRORS = ("UnknownDriverError", "NotConfiguredError", "NotEmulatedError")


@dataclass(frozen=True)
class KnownFailure:
    """A cell expected to fail: driver and kernel are shell patterns ("5.10.*")."""

    driver: str
    kernel: str
    reason: str

    def matches(self, driver: str, kernel: str) -> bool:
        return fnmatch.fnmatchcase(driver, self.driver) and fnmatch.fnmatchcase(kernel,
                                                                               self.kernel)


def load_known_failures(path: Path | None) -> list[KnownFailure]:
    """The `[[failure]]` tables of a TOML file (driver, kernel, reason)."""
    if path is None:
        return []
    try:
        data = tomllib.loads(path.read_text())
        return [KnownFailure(driver=str(f["driver"]), kernel=str(f["kernel"]),
                             reason=str(f["reason"])) for f in data.get("failure", [])]
    except OSError as err:
        raise UserError(f"{path}: cannot read the known failures: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a known-failures file ([[failure]] with driver, "
                        f"kernel, reason): {err}") from None


#: What every cell's result depends on besides the driver, the kernel and pfq.ko: folders
#: and the files of each that count. The whole package (every subpackage's code, the
#: templates, the scripts), the rules and manifests, the hook test module, and libpcap's
#: PFQ module (the hook lab's pcap tests).
TOOL_INPUTS: tuple[tuple[Path, str], ...] = (
    (Path(__file__).resolve().parents[1], "**/*"),
    (PATCHES_DIR, "*.toml"),
    (DRIVERS_DIR, "*.toml"),
    (HOOKMOD_DIR, "**/*"),
    (PCAP_MODULE_DIR, "**/*"),
)


@functools.cache
def _tool_digest() -> str:
    """The tool's part of every cell key (read once a run)."""
    h = hashlib.sha256(__version__.encode())
    for root, pattern in TOOL_INPUTS:
        hash_files(h, root, pattern)
    return h.hexdigest()


def cell_key(driver: str, release: str, lab: bool, kmod: str) -> str:
    """Everything a cell's result depends on: the tool, the driver, the kernel, whether it
    goes to the lab, and `kmod` (build.kmod_key: pfq.ko's inputs and the kernel's ABI)."""
    data = f"{_tool_digest()}\0{driver}\0{release}\0{lab}\0{kmod}"
    return hashlib.sha256(data.encode()).hexdigest()[:20]


#: The row of the hook test module (`pfq-omatic hooks`) in a matrix run with hooks.
HOOKS_ROW = "pfq_hooktest"


@dataclass
class MatrixRun:
    drivers: Sequence[str]
    kernels: Sequence[Kernel]
    out_dir: Path
    #: The drivers proven in the lab too.
    lab: frozenset[str] | set[str] = frozenset()
    known: Sequence[KnownFailure] = ()
    workers: int = os.cpu_count() or 1
    #: The command line shown at the top of the reports.
    command: str = "pfq-omatic matrix"
    force: bool = False
    #: The drivers of each kernel (by release) when they differ: `--drivers all` takes
    #: every NIC driver each kernel builds. A kernel not in it takes `drivers`.
    per_kernel: Mapping[str, Sequence[str]] | None = None
    #: Also prove every hook on each kernel with the hook test module (a row of its own).
    hooks: bool = False

    def drivers_of(self, kernel: Kernel) -> Sequence[str]:
        drivers = list(self.drivers)
        if self.per_kernel is not None and kernel.release in self.per_kernel:
            drivers = list(self.per_kernel[kernel.release])
        return [*drivers, HOOKS_ROW] if self.hooks else drivers

    def cell_argvs(self, driver: str, kernel: Kernel) -> list[list[str]]:
        jobs = str(max(1, (os.cpu_count() or 1) // max(1, self.workers)))
        out = str(self.out_dir / "builds")
        if driver == HOOKS_ROW:
            return [["pfq-omatic", "hooks", "--kernel", kernel.release, "--out", out,
                     "-j", jobs]]
        argvs = [["pfq-omatic", "build", driver, "--kernel", kernel.release, "--out", out,
                  "-j", jobs]]
        if driver in self.lab:
            argvs.append(["pfq-omatic", "lab", driver, "--kernel", kernel.release, "--out",
                          out, "-j", jobs])
        return argvs


def _suite(kernel: Kernel) -> str:
    return kernel.suite or "host"


def _reproducer(argvs: list[list[str]]) -> str:
    return " && ".join(shlex.join(a) for a in argvs)


def _cell_path(out_dir: Path, kernel: str, driver: str) -> Path:
    return out_dir / "cells" / kernel / f"{driver}.json"


class _Procs:
    """The cells' running processes, to kill whole on Ctrl-C."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def run(self, argv: list[str], log: Any, env: dict[str, str]) -> int:
        with self.lock:
            if self.stopping:
                raise KeyboardInterrupt
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            self.live.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)

    def kill_all(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.live:
                # Its own session: SIGTERM to the group reaches make, QEMU and the rest;
                # pfq-omatic unwinds on SIGTERM (mounts, guests, temp folders).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in list(self.live):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _run_cell(run: MatrixRun, driver: str, kernel: Kernel, procs: _Procs) -> Cell:
    argvs = run.cell_argvs(driver, kernel)
    log_rel = f"cells/{kernel.release}/{driver}.log"
    log_path = run.out_dir / log_rel
    log_path.parent.mkdir(parents=True, exist_ok=True)
    failure = log_path.with_suffix(".failure")
    failure.unlink(missing_ok=True)
    env = {**os.environ, FAILURE_ENV: str(failure)}
    start = time.monotonic()
    status, reason, vanilla_fails = "pass", "", False
    with open(log_path, "wb") as log:
        for argv in argvs:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            code = procs.run([sys.executable, "-m", "omatic", *argv[1:]], log, env)
            if code == 0:
                continue
            status, reason = _classify(code, failure, log_path)
            if status == "fail" and argv[1] == "build":
                # The rewrite's fault? The driver staged and built the same way, not
                # rewritten, says.
                vanilla = [*argv, "--vanilla"]
                log.write(f"$ {shlex.join(vanilla)}\n".encode())
                log.flush()
                failure.unlink(missing_ok=True)
                if procs.run([sys.executable, "-m", "omatic", *vanilla[1:]], log, env) != 0:
                    vanilla_fails = True
                    reason = f"fails unrewritten too: {reason}"
            break
    failure.unlink(missing_ok=True)
    expected = next((k for k in run.known if k.matches(driver, kernel.release)), None)
    if expected and status == "fail":
        reason = f"{expected.reason} ({reason})" if reason else expected.reason
    return Cell(driver=driver, kernel=kernel.release, suite=_suite(kernel), status=status,
                seconds=round(time.monotonic() - start, 1), log=log_rel,
                reproducer=_reproducer(argvs), reason=reason,
                expected=bool(expected and status == "fail"), lab=driver in run.lab,
                vanilla_fails=vanilla_fails)


def _classify(code: int, failure: Path, log: Path) -> tuple[str, str]:
    """(status, reason) of a cell command that exited `code`."""
    try:
        record = json.loads(failure.read_text())
    except (OSError, ValueError):
        record = None
    if record is None:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit {code}"
        if code == 130 or code < 0:
            return "error", f"interrupted or killed (exit {code})"
        # A verify or lab failure is reported, not raised: exit 2 with no error record.
        return ("fail", last) if code == 2 else ("error", f"exit {code}: {last}")
    # One line: the error's first, and the first line of detail under it if any.
    message = " ".join(str(record.get("message", "")).splitlines()[:2])[:300]
    if record.get("error") in _SKIP_ERRORS:
        return "skip", message
    if record.get("kind") == "build":
        return "fail", message
    return "error", message


def run_matrix(run: MatrixRun, on_cell: Callable[[Cell, bool], None] | None = None
               ) -> list[Cell]:
    """Run every cell not already done with the same key; write the reports after each.
    `on_cell(cell, reused)` is told of each finished cell."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    cells: dict[tuple[str, str], Cell] = {}
    todo: list[tuple[str, Kernel, str]] = []
    for kernel in run.kernels:
        kmod = kmod_key(kernel)
        for driver in run.drivers_of(kernel):
            key = cell_key(driver, kernel.release, driver in run.lab, kmod)
            done = _reuse(run.out_dir, kernel.release, driver, key)
            if done is not None and not run.force:
                cells[(kernel.release, driver)] = done
                if on_cell:
                    on_cell(done, True)
            else:
                todo.append((driver, kernel, key))
    lock = threading.Lock()

    def finish(cell: Cell, key: str) -> None:
        with lock:
            path = _cell_path(run.out_dir, cell.kernel, cell.driver)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"key": key, "cell": cell.to_json()}, indent=1) + "\n")
            cells[(cell.kernel, cell.driver)] = cell
            write_outputs(list(cells.values()), run.out_dir, run.command, date)
        if on_cell:
            on_cell(cell, False)

    procs = _Procs()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, run.workers))
    try:
        futures = {pool.submit(_run_cell, run, driver, kernel, procs): key
                   for driver, kernel, key in todo}
        for future in concurrent.futures.as_completed(futures):
            finish(future.result(), futures[future])
    except BaseException:
        procs.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    result = list(cells.values())
    write_outputs(result, run.out_dir, run.command, date)
    return result


def _reuse(out_dir: Path, kernel: str, driver: str, key: str) -> Cell | None:
    """The cell written by an earlier run with the same key, unless it was an error (the
    infrastructure may work now)."""
    try:
        data = json.loads(_cell_path(out_dir, kernel, driver).read_text())
        cell = Cell.from_json(data["cell"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cell if data.get("key") == key and cell.status != "error" else None
