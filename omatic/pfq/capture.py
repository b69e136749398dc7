"""`pfq-omatic capture`: capture with N worker processes fanned out by one PFQ group.

The parent does everything that can fail on bad input before a worker exists: it
resolves the configuration (command line over PCAP_* environment over the --config file,
see omatic.pfq.config.CaptureConfig), compiles the filter, opens one endpoint per worker and
joins each to the group (so the group knows all of them before the first frame), sets
the group's steering, BPF and VLAN filters and binds it to the devices through the first
endpoint, creates every pcap file, and only then puts the devices in tap (or capture)
mode. Then it forks the workers, each keeping its own endpoint and file, and watches
them: progress on a terminal, a summary line per worker, the devices' previous modes
restored at the end, whatever happened (pfq.ko unbinds the group when its last
endpoint leaves).

Standard library only: this runs in a minimal guest's plain python3.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TextIO

from omatic.errors import PathError, UserError
from omatic.pfq.config import CaptureConfig, apply_env, parse_config
from omatic.pfq.endpoint import (
    Endpoint,
    EndpointStats,
    Frame,
    PfqError,
    check_ifname,
    compile_filter,
    steer_mode,
)
from omatic.pfq.uapi import DEVICE, PFQ_GROUP_ENDPOINTS, PFQ_GROUPS, PFQ_VLAN_IDS

#: Where pfq.ko takes "<dev> <mode>" and lists every device's mode.
CONTROL = Path("/proc/net/pfq/control")
MODES = ("tap", "capture")
#: What the parent waits for the workers to stop once asked, before it kills them.
GRACE_SECONDS = 10.0
#: How long a worker waits for a frame before it looks at the clock and its signals.
IDLE_SECONDS = 0.25
#: A worker writes its records out when this many bytes wait, or this often.
FLUSH_BYTES = 1 << 16
FLUSH_SECONDS = 1.0
#: Classic pcap, nanosecond timestamps, host (little) endian; link type 1: Ethernet.
PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1


# --- input ------------------------------------------------------------------------------

def parse_devices(spec: str) -> tuple[str, ...]:
    """The devices of `DEV[^DEV...]` (the paper's syntax for one capture on several)."""
    devices = tuple(spec.split("^"))
    for dev in devices:
        try:
            check_ifname(dev)
        except UserError:
            raise UserError(f"{spec!r}: expected DEV[^DEV...], network device names") \
                from None
    if len(set(devices)) != len(devices):
        raise UserError(f"{spec!r}: a device is named twice")
    return devices


def parse_vlan(text: str) -> tuple[frozenset[int], bool]:
    """The VLAN ids of `--vlan`: ids and ranges separated by commas (`10,20-29`), and the
    word `untagged` to let frames without a tag pass too."""
    ids: set[int] = set()
    untagged = False
    for part in (p.strip() for p in text.split(",")):
        if part == "untagged":
            untagged = True
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            first, last = -1, -1
        if not 0 <= first <= last < PFQ_VLAN_IDS:
            raise UserError(f"--vlan {text!r}: {part!r} is not a VLAN id or range "
                            f"(0..{PFQ_VLAN_IDS - 1}, e.g. 10,20-29,untagged)")
        ids.update(range(first, last + 1))
    if not ids and not untagged:
        raise UserError(f"--vlan {text!r}: no VLAN id")
    return frozenset(ids), untagged


def output_path(path: Path, index: int) -> Path:
    """Worker `index`'s file: its index before the extension (w.pcap -> w.0.pcap, w ->
    w.0)."""
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


@dataclass(frozen=True)
class CaptureOptions:
    """What the command line asked for; None: not given (the configuration decides)."""

    devices: str
    output: Path
    group: int | None = None
    steer: str | None = None
    filter: str | None = None
    vlan: str | None = None
    caplen: int | None = None
    slots: int | None = None
    workers: int = 1
    count: int | None = None
    duration: float | None = None
    config: Path | None = None
    mode: str = "tap"


@dataclass(frozen=True)
class CapturePlan:
    """A capture resolved and checked: everything the parent and the workers need."""

    devices: tuple[str, ...]
    #: FILE of -w; worker i writes output_path(output, i).
    output: Path
    group: int
    #: A PFQ steering mode (omatic.pfq.uapi.STEER_MODES).
    steer: str
    #: The compiled filter; None: every frame passes.
    program: tuple[tuple[int, int, int, int], ...] | None
    #: VLAN ids that pass; None: no VLAN filter.
    vlan: frozenset[int] | None
    untagged: bool
    #: Bytes kept per frame and ring slots per endpoint; 0: pfq.ko's defaults.
    caplen: int
    slots: int
    workers: int
    #: Frames in all (shared by the workers); None: no limit.
    count: int | None
    duration: float | None
    mode: str

    def files(self) -> list[Path]:
        return [output_path(self.output, i) for i in range(self.workers)]


def _load_config(options: CaptureOptions, environ: Mapping[str, str]) -> CaptureConfig:
    path = options.config or (Path(environ["PCAP_CONFIG"]) if environ.get("PCAP_CONFIG")
                              else None)
    if path is None:
        return apply_env(CaptureConfig(source="the PCAP_* environment"), environ)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise PathError(f"cannot read the configuration: {getattr(err, 'strerror', err)}",
                        path=path) from None
    return apply_env(parse_config(text, path), environ)


def plan_capture(options: CaptureOptions, environ: Mapping[str, str]) -> CapturePlan:
    """Resolve `options` over the configuration file and the environment, and check it
    all, compiling the filter: what could be wrong is found before any device changes."""
    devices = parse_devices(options.devices)
    if not 1 <= options.workers <= PFQ_GROUP_ENDPOINTS:
        raise UserError(f"--workers {options.workers}: expected 1..{PFQ_GROUP_ENDPOINTS} "
                        "(the endpoints a group holds)")
    if options.count is not None and options.count < 1:
        raise UserError(f"--count {options.count}: expected at least 1")
    if options.duration is not None and not options.duration > 0:
        raise UserError(f"--duration {options.duration}: expected seconds above 0")
    if options.mode not in MODES:
        raise UserError(f"--mode {options.mode}: expected {' or '.join(MODES)}")
    config = _load_config(options, environ)
    group = options.group if options.group is not None else config.group_of(devices)
    group = 0 if group is None else group
    if not 0 <= group < PFQ_GROUPS:
        raise UserError(f"--group {group}: expected 0..{PFQ_GROUPS - 1}")
    steer = steer_mode(options.steer or config.steer_of(group) or "hash")
    caplen = options.caplen if options.caplen is not None else config.caplen or 0
    if caplen and not 64 <= caplen <= 65535:
        raise UserError(f"--caplen {caplen}: expected 64..65535")
    slots = options.slots or 0
    if not 0 <= slots <= 1 << 20:
        raise UserError(f"--slots {slots}: expected 1..1048576")
    vlan, untagged = parse_vlan(options.vlan) if options.vlan is not None else (None, False)
    output = options.output
    if output.is_dir() or not output.name:
        raise PathError("is a folder: -w takes a file name (worker i writes NAME.i.EXT)",
                        path=output)
    if not output.absolute().parent.is_dir():
        raise PathError("no such folder", path=output.absolute().parent)
    program = None
    if options.filter is not None:
        program = tuple(compile_filter(options.filter, caplen or 65535))
    return CapturePlan(devices=devices, output=output, group=group, steer=steer,
                       program=program, vlan=vlan, untagged=untagged, caplen=caplen,
                       slots=slots, workers=options.workers, count=options.count,
                       duration=options.duration, mode=options.mode)


# --- devices' modes ---------------------------------------------------------------------

def device_modes(control: Path = CONTROL) -> dict[str, str]:
    """Each device's PFQ mode, from control's `dev=eth0 mode=pass ...` lines."""
    try:
        text = control.read_text()
    except FileNotFoundError:
        raise PathError("missing: is pfq.ko loaded?", path=control) from None
    except OSError as err:
        raise PathError(f"cannot read: {err.strerror}", path=control) from None
    modes = {}
    for line in text.splitlines():
        fields = dict(f.partition("=")[::2] for f in line.split())
        if "dev" in fields and "mode" in fields:
            modes[fields["dev"]] = fields["mode"]
    return modes


def set_device_mode(dev: str, mode: str, control: Path = CONTROL) -> None:
    """Put `dev` in `mode` (pass, tap or capture): one write of "<dev> <mode>"."""
    try:
        fd = os.open(control, os.O_WRONLY)
        try:
            os.write(fd, f"{dev} {mode}\n".encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise PfqError.of(f"{control}: {dev} {mode}", err) from None


# --- pcap -------------------------------------------------------------------------------

class PcapWriter:
    """A classic pcap file (nanosecond timestamps, Ethernet) written in whole records:
    records gather in memory and go out together, so the file never ends inside one."""

    def __init__(self, path: Path, snaplen: int) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                              0o644)
        except OSError as err:
            raise PathError(f"cannot write: {err.strerror}", path=path) from None
        self._buf = bytearray(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen,
                                          LINKTYPE_ETHERNET))
        self.flush()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def add(self, tstamp_ns: int, wire_len: int, data: bytes) -> None:
        sec, nsec = divmod(tstamp_ns, 1_000_000_000)
        self._buf += struct.pack("<IIII", sec & 0xFFFFFFFF, nsec, len(data),
                                 max(wire_len, len(data)))
        self._buf += data

    def flush(self) -> None:
        view = memoryview(self._buf)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        finally:
            view.release()
        del self._buf[:]

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self.fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self.fd)
                self.fd = -1

    def abandon(self) -> None:
        """Close this process's copy of the file without writing (a forked sibling's)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            del self._buf[:]


# --- shared state -----------------------------------------------------------------------

_WORKER = struct.Struct("<7Q")
_FIELDS = ("frames", "bytes", "saved", "received", "delivered", "dropped", "state")
STARTING, RUNNING, DONE = 0, 1, 2


class Shared:
    """Memory the parent and its forked workers share (an anonymous MAP_SHARED mapping):
    the count of frames taken in all, and each worker's counters. Each worker writes only
    its own; the total changes under a POSIX lock of a temporary file, which the kernel
    drops if its holder dies."""

    def __init__(self, workers: int, lock_dir: Path) -> None:
        self._map = mmap.mmap(-1, 8 + workers * _WORKER.size)
        self._words = memoryview(self._map).cast("Q")
        self._lock, name = tempfile.mkstemp(dir=lock_dir, prefix=".pfq-capture-")
        os.unlink(name)

    def total(self) -> int:
        return int(self._words[0])

    def reserve(self, count: int) -> bool:
        """Take one of `count` frames in all; False when they are all taken."""
        fcntl.lockf(self._lock, fcntl.LOCK_EX)
        try:
            total = self._words[0]
            if total >= count:
                return False
            self._words[0] = total + 1
            return True
        finally:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)

    def get(self, index: int) -> dict[str, int]:
        at = 1 + index * len(_FIELDS)
        return dict(zip(_FIELDS, self._words[at:at + len(_FIELDS)].tolist(), strict=True))

    def set(self, index: int, **values: int) -> None:
        at = 1 + index * len(_FIELDS)
        for name, value in values.items():
            self._words[at + _FIELDS.index(name)] = value

    def close(self) -> None:
        self._words.release()
        self._map.close()
        os.close(self._lock)


# --- the worker -------------------------------------------------------------------------

class Source(Protocol):
    """What a worker reads: an omatic.pfq.endpoint.Endpoint (or a fake of one in tests)."""

    def records(self, timeout: float | None = None) -> Iterator[Frame]: ...

    def stats(self) -> EndpointStats: ...


def capture_loop(source: Source, writer: PcapWriter, shared: Shared, index: int,
                 stopped: Callable[[], bool], deadline: float | None,
                 count: int | None) -> None:
    """Write `source`'s frames until `stopped()`, the `deadline` (monotonic) or `count`
    frames in all; every record is whole in the file when it returns."""
    frames = size = 0
    last_flush = time.monotonic()

    def done() -> bool:
        return (stopped() or (deadline is not None and time.monotonic() >= deadline)
                or (count is not None and shared.total() >= count))

    def save() -> None:
        nonlocal last_flush
        writer.flush()
        last_flush = time.monotonic()
        stats = source.stats()
        shared.set(index, frames=frames, bytes=size, saved=frames, received=stats.received,
                   delivered=stats.delivered, dropped=stats.dropped)

    shared.set(index, state=RUNNING)
    while not done():
        wait = IDLE_SECONDS if deadline is None else \
            max(0.0, min(IDLE_SECONDS, deadline - time.monotonic()))
        for frame in source.records(wait):
            if count is not None and not shared.reserve(count):
                break
            writer.add(frame.tstamp_ns, frame.wire_len, frame.data)
            frames, size = frames + 1, size + len(frame.data)
            shared.set(index, frames=frames, bytes=size)
            if writer.pending >= FLUSH_BYTES or time.monotonic() - last_flush >= FLUSH_SECONDS:
                save()
            if done():
                break
        save()
    writer.close()
    shared.set(index, state=DONE)


def _worker(index: int, endpoint: Endpoint, writer: PcapWriter, shared: Shared,
            plan: CapturePlan, deadline: float | None) -> int:
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    capture_loop(endpoint, writer, shared, index, lambda: stop, deadline, plan.count)
    endpoint.close()
    return 0


# --- the parent -------------------------------------------------------------------------

def _size(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    value, at = float(n), 0
    while value >= 1024 and at < len(units) - 1:
        value, at = value / 1024, at + 1
    return f"{n} B" if at == 0 else f"{value:.1f} {units[at]}"


class _Progress:
    """One line per worker, redrawn in place on a terminal; nothing otherwise."""

    #: Seconds between two drawings.
    PERIOD = 0.5

    def __init__(self, out: TextIO, plan: CapturePlan, shared: Shared) -> None:
        self.out, self.plan, self.shared = out, plan, shared
        self.tty = out.isatty()
        self.drawn = 0
        self.last = 0.0

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self.last < self.PERIOD):
            return
        self.last = now
        lines = []
        for i in range(self.plan.workers):
            s = self.shared.get(i)
            lines.append(f"worker {i}: {s['frames']} frames, {_size(s['bytes'])}, "
                         f"{s['dropped']} dropped")
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)

    def erase(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.flush()
            self.drawn = 0


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited {code}"


def _watch(plan: CapturePlan, pids: dict[int, int], shared: Shared, out: TextIO,
           stopping: Callable[[], bool], deadline: float | None) -> dict[int, int]:
    """Wait for every worker, drawing progress; the exit status of each, by index. A
    worker that does not stop within GRACE_SECONDS of being due to is killed."""
    progress = _Progress(out, plan, shared)
    statuses: dict[int, int] = {}
    kill_at = None
    while pids:
        for pid, index in list(pids.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                statuses[index] = status
                del pids[pid]
        due = (stopping() or (deadline is not None and time.monotonic() >= deadline)
               or (plan.count is not None and shared.total() >= plan.count))
        if due and kill_at is None:
            kill_at = time.monotonic() + GRACE_SECONDS
        if kill_at is not None and time.monotonic() >= kill_at:
            for pid, index in pids.items():
                print(f"pfq-omatic: worker {index} did not stop in {GRACE_SECONDS:.0f} s: "
                      "killing it", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            kill_at = time.monotonic() + GRACE_SECONDS
        if pids:
            progress.draw()
            time.sleep(0.1)
    progress.erase()
    return statuses


def _fork_workers(plan: CapturePlan, endpoints: list[Endpoint], writers: list[PcapWriter],
                  shared: Shared, deadline: float | None) -> dict[int, int]:
    """Fork one worker per endpoint (signals blocked meanwhile); worker pids to indexes.
    The parent's copies of the endpoints and files are closed: each worker owns its own,
    so a worker's exit takes its endpoint out of the group."""
    pids: dict[int, int] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for index in range(plan.workers):
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                code = 2
                try:
                    for i in range(plan.workers):
                        if i != index:
                            endpoints[i].close()
                            writers[i].abandon()
                    code = _worker(index, endpoints[index], writers[index], shared, plan,
                                   deadline)
                except BaseException as err:
                    print(f"pfq-omatic: error: worker {index}: {err or type(err).__name__}",
                          file=sys.stderr)
                finally:
                    os._exit(code)
            pids[pid] = index
    except OSError:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        for endpoint in endpoints:
            endpoint.close()
        for writer in writers:
            writer.abandon()
    return pids


def _summary(plan: CapturePlan, shared: Shared, statuses: dict[int, int]) -> list[str]:
    lines = []
    for i, path in enumerate(plan.files()):
        s = shared.get(i)
        endpoint = (f"endpoint received {s['received']}, delivered {s['delivered']}, "
                    f"dropped {s['dropped']}")
        if os.waitstatus_to_exitcode(statuses[i]) == 0:
            lines.append(f"worker {i}: {s['frames']} frames, {s['bytes']} bytes -> {path} "
                         f"({endpoint})")
        else:
            lines.append(f"worker {i}: FAILED ({_describe(statuses[i])}); {path} holds the "
                         f"{s['saved']} frames written before ({endpoint})")
    total = sum(shared.get(i)["frames"] for i in range(plan.workers))
    lines.append(f"{total} frames in {plan.workers} file(s)")
    return lines


def _restore(previous: dict[str, str], control: Path) -> None:
    """Put the devices back in their modes (best effort: each failure is a warning, and
    the rest is still undone). The group needs nothing: pfq.ko unbinds it from its
    devices when its last endpoint leaves, and while another capture shares it, it must
    stay bound."""
    for dev, mode in previous.items():
        try:
            set_device_mode(dev, mode, control)
        except UserError as err:
            print(f"pfq-omatic: warning: {err}", file=sys.stderr)


def run_capture(plan: CapturePlan, out: TextIO, opener: Callable[[], Endpoint] | None = None,
                control: Path | None = None) -> int:
    """Capture as `plan` says; the exit code: 0 when every worker ended well (also on
    Ctrl-C or SIGTERM, which make each one finish its record and close its file), 2 when
    one died or failed. Bad input raises UserError before any device changes mode."""
    opener = opener or (lambda: Endpoint(DEVICE))
    control = control or CONTROL
    modes = device_modes(control)
    for dev in plan.devices:
        if dev not in modes:
            raise UserError(f"{dev}: pfq.ko does not know this device (not in {control})")
    endpoints: list[Endpoint] = []
    writers: list[PcapWriter] = []
    previous: dict[str, str] = {}
    shared = None
    handlers: dict[int, Any] = {}
    try:
        caplen = 0
        for _ in range(plan.workers):
            endpoints.append(opener())
            caplen = endpoints[-1].ring(plan.slots, plan.caplen).caplen
            endpoints[-1].join(plan.group)
        first = endpoints[0]
        first.steer(plan.steer)
        first.set_filter(plan.program)
        first.set_vlan(plan.vlan, plan.untagged)
        for dev in plan.devices:
            first.bind(dev)
        writers = [PcapWriter(path, caplen) for path in plan.files()]
        shared = Shared(plan.workers, plan.output.absolute().parent)
        for dev in plan.devices:
            if modes[dev] != plan.mode:
                set_device_mode(dev, plan.mode, control)
                previous[dev] = modes[dev]
        out.write(f"capturing on {'^'.join(plan.devices)} ({plan.mode} mode): group "
                  f"{plan.group}, steer {plan.steer}, {plan.workers} worker(s), caplen "
                  f"{caplen} -> {', '.join(map(str, plan.files()))}\n")
        out.flush()

        pids: dict[int, int] = {}
        stop = False

        def forward(signum: int, frame: FrameType | None) -> None:
            nonlocal stop
            stop = True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

        deadline = None if plan.duration is None else time.monotonic() + plan.duration
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
            pids.update(_fork_workers(plan, endpoints, writers, shared, deadline))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        statuses = _watch(plan, pids, shared, out, lambda: stop, deadline)
        for line in _summary(plan, shared, statuses):
            out.write(line + "\n")
        ok = all(os.waitstatus_to_exitcode(s) == 0 for s in statuses.values())
        return 0 if ok else 2
    finally:
        for endpoint in endpoints:
            endpoint.close()
        for writer in writers:
            writer.close()
        _restore(previous, control)
        if shared is not None:
            shared.close()
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
