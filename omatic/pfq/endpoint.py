"""User space of /dev/pfq: endpoints, their rings and frames, BPF filters. The contract
it speaks is omatic.pfq.uapi. Everything here is the standard library only: it runs in a
minimal guest whose python3 has no third-party packages.

An `Endpoint` is one open file of /dev/pfq: a ring the receive hooks fill once it has
joined a group that is bound to devices in tap or capture mode. Its frames are read from
the mmap'd ring (`records`, `frames`) or with read() (`read_records`).

The fan-out configuration grammar of `pfq-omatic capture --config` is omatic.pfq.config.
"""

from __future__ import annotations

import array
import errno
import fcntl
import mmap
import os
import platform
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from omatic.errors import UserError
from omatic.pfq.uapi import (
    BIND,
    BPF_MAXINSNS,
    DEVICE,
    ENDPOINT_STATS,
    FILTER,
    FRAME,
    IFNAMSIZ,
    PFQ_FILTER_SHARED,
    PFQ_FRAME_EMPTY,
    PFQ_FRAME_VLAN,
    PFQ_GROUP_ANY,
    PFQ_GROUPS,
    PFQ_IOC_BIND,
    PFQ_IOC_FILTER,
    PFQ_IOC_JOIN,
    PFQ_IOC_LEAVE,
    PFQ_IOC_RING,
    PFQ_IOC_STATS,
    PFQ_IOC_STEER,
    PFQ_IOC_UNBIND,
    PFQ_IOC_VLAN,
    PFQ_RING_MAGIC,
    PFQ_STEER_SHARED,
    PFQ_VLAN_IDS,
    RING_HEAD,
    RING_INFO,
    RING_VERSION,
    SOCK_FILTER,
    STEER_ALIASES,
    STEER_MODES,
    VLAN,
    Program,
)

# --- errors -----------------------------------------------------------------------------

class PfqError(UserError):
    """/dev/pfq refused an operation: what was asked, the errno and what to do."""

    template = "{op}: {message}"

    _HINTS: ClassVar[dict[int, str]] = {
        errno.EPERM: "needs CAP_NET_RAW in the initial user namespace (run as root)",
        errno.EACCES: "needs CAP_NET_RAW (run as root)",
        errno.EINVAL: "the kernel refused it: see dmesg for why",
        errno.EBUSY: "busy: the ring is already made with other sizes, the group is full or "
                     "another namespace's, or its first member set this otherwise",
        errno.ENODEV: "no such network device in this namespace",
        errno.ENOTTY: "not an ioctl this file knows: is it /dev/pfq of this pfq.ko?",
        errno.ENOBUFS: "over a limit on ring memory: RLIMIT_MEMLOCK (ulimit -l; CAP_IPC_LOCK "
                       "lifts it) or pfq.ko's ring_memory_max (/proc/net/pfq/memory)",
    }

    @classmethod
    def of(cls, op: str, err: OSError) -> PfqError:
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        hint = cls._HINTS.get(err.errno or 0, "")
        return cls(f"{name} ({os.strerror(err.errno or 0)})" + (f": {hint}" if hint else ""),
                   op=op)


def check_ifname(dev: str) -> bytes:
    """`dev` as the kernel takes a device name (bytes, shorter than IFNAMSIZ), or a
    UserError saying why it cannot be one."""
    raw = dev.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or any(c <= 32 for c in raw):
        raise UserError(f"{dev!r}: not a network device name (1..15 characters, no '/' "
                        "or blanks)")
    return raw


def steer_mode(name: str) -> str:
    """The PFQ steering mode `name` stands for (a mode or one of STEER_ALIASES)."""
    mode = STEER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if mode not in STEER_MODES:
        names = ", ".join([*STEER_MODES, *STEER_ALIASES])
        raise UserError(f"unknown steering mode {name!r} (expected one of {names})")
    return mode


# --- frames and rings -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame (struct pfq_frame and its bytes)."""

    #: CLOCK_REALTIME at capture, in nanoseconds.
    tstamp_ns: int
    #: Its length on the wire (struct pfq_frame.len), 802.1Q tag included.
    wire_len: int
    #: The device it came from.
    ifindex: int
    #: Its receive queue (0 when the driver set none).
    queue: int
    #: The tag a NIC stripped (and the kernel put back into `data`); None if none.
    vlan_tci: int | None
    #: The captured bytes from the Ethernet header on (struct pfq_frame.caplen of them).
    data: bytes


@dataclass(frozen=True)
class RingInfo:
    """The sizes of an endpoint's ring (struct pfq_ring_info)."""

    slots: int
    #: Bytes kept per frame at most.
    caplen: int
    #: Stride of the slots.
    slot_size: int
    #: Where slot 0 starts in the mapping.
    data_offset: int
    #: Bytes to mmap at offset 0.
    mmap_size: int


@dataclass(frozen=True)
class EndpointStats:
    """An endpoint's counters (struct pfq_endpoint_stats)."""

    #: Frames steered to it.
    received: int
    #: Frames put in its ring.
    delivered: int
    #: Frames its full ring had no room for.
    dropped: int
    #: Its group, None when in none.
    group: int | None


class Ring:
    """The reader's side of a mapped ring (or of any buffer laid out the same way).

    Frame n lives in slot n % slots and is published when the slot's `seq` is n + 1
    (truncated to 32 bits), written last by its producer; `tail` is the number of the
    next frame to read, advanced after the slot is read so the kernel may reuse it. On
    x86_64 aligned loads and stores are atomic and ordered (TSO), which is all the
    acquire/release the protocol asks for."""

    def __init__(self, buf: mmap.mmap | bytearray) -> None:
        magic, version, slots, slot_size, caplen, data_offset = struct.unpack_from(
            "<6I", buf, 0)
        if magic != PFQ_RING_MAGIC or version != RING_VERSION:
            raise PfqError(f"magic {magic:#x} version {version}, expected "
                           f"{PFQ_RING_MAGIC:#x} version {RING_VERSION}", op="ring")
        if (not slots or slot_size < FRAME.size + caplen or slot_size % 8
                or data_offset < RING_HEAD.size or data_offset + slots * slot_size > len(buf)):
            raise PfqError(f"the ring's header does not fit its {len(buf)} bytes", op="ring")
        self.slots: int = slots
        self.slot_size: int = slot_size
        self.caplen: int = caplen
        self.data_offset: int = data_offset
        self._buf = buf
        self._words = memoryview(buf)[:RING_HEAD.size].cast("Q")
        self._tail = RING_HEAD.offset("tail") // 8
        self._seq = FRAME.offset("seq")

    @property
    def tail(self) -> int:
        return int(self._words[self._tail])

    def wake_after(self, frames: int) -> None:
        """Be told of frames (poll(), a read() that found none) once `frames` wait, 0 or
        1: the first; the kernel takes at most the ring's slots."""
        struct.pack_into("<I", self._buf, RING_HEAD.offset("wake_after"), frames)

    def _slot(self, n: int) -> int:
        return self.data_offset + (n % self.slots) * self.slot_size

    def ready(self) -> bool:
        """Whether frame `tail` is published."""
        tail = self.tail
        seq: int = struct.unpack_from("<I", self._buf, self._slot(tail) + self._seq)[0]
        return seq == (tail + 1) & 0xFFFFFFFF

    def take(self) -> Frame | None:
        """The oldest frame not consumed yet, consuming it; None when there is none.
        Slots the kernel published empty (PFQ_FRAME_EMPTY) are consumed and skipped."""
        while self.ready():
            tail = self.tail
            at = self._slot(tail)
            tstamp, length, caplen, ifindex, queue, tci, flags, _ = (
                FRAME.struct.unpack_from(self._buf, at))
            if caplen > self.caplen:
                raise PfqError(f"frame {tail} claims {caplen} bytes, the ring keeps "
                               f"{self.caplen}", op="ring")
            data = bytes(self._buf[at + FRAME.size:at + FRAME.size + caplen])
            self._words[self._tail] = tail + 1
            if not flags & PFQ_FRAME_EMPTY:
                return Frame(tstamp, length, ifindex, queue, _tci(tci, flags), data)
        return None

    def close(self) -> None:
        """Let go of the buffer (an mmap cannot close while a view of it exists)."""
        self._words.release()


def _tci(tci: int, flags: int) -> int | None:
    return tci if flags & PFQ_FRAME_VLAN else None


def parse_records(data: bytes) -> list[Frame]:
    """The frames of what read() returned: records of a struct pfq_frame and its caplen
    bytes, back to back."""
    frames, at = [], 0
    while at < len(data):
        if at + FRAME.size > len(data):
            raise PfqError(f"a record header cut at byte {at}", op="read")
        tstamp, length, caplen, ifindex, queue, tci, flags, _ = FRAME.struct.unpack_from(
            data, at)
        at += FRAME.size
        if at + caplen > len(data):
            raise PfqError(f"a record of {caplen} bytes cut at byte {at}", op="read")
        frames.append(Frame(tstamp, length, ifindex, queue, _tci(tci, flags),
                            data[at:at + caplen]))
        at += caplen
    return frames


def _vlan_bitmap(ids: Iterable[int]) -> list[int]:
    words = [0] * (PFQ_VLAN_IDS // 64)
    for vid in ids:
        if not 0 <= vid < PFQ_VLAN_IDS:
            raise UserError(f"VLAN id {vid}: expected 0..{PFQ_VLAN_IDS - 1}")
        words[vid // 64] |= 1 << (vid % 64)
    return words


class Endpoint:
    """One open file of /dev/pfq: a ring the hooks fill once it joined a group.

    Group settings (steering, filter, VLAN filter, bindings) apply to the group this
    endpoint is in; join first. Closing does not LEAVE: the kernel leaves when the last
    reference to the file goes, so a forked copy keeps the endpoint alive."""

    def __init__(self, path: str | os.PathLike[str] = DEVICE, nonblock: bool = False) -> None:
        self.path = str(path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC
                              | (os.O_NONBLOCK if nonblock else 0))
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                raise PfqError(f"{err.strerror}: is pfq.ko loaded?", op=self.path) from None
            raise PfqError.of(f"open {self.path}", err) from None
        self._info: RingInfo | None = None
        self._map: mmap.mmap | None = None
        self._ring: Ring | None = None

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ioctl(self, op: str, request: int, arg: bytes | bytearray | int = 0) -> None:
        try:
            if isinstance(arg, bytearray):
                fcntl.ioctl(self.fd, request, arg, True)  # the kernel writes back into it
            else:
                fcntl.ioctl(self.fd, request, arg)
        except OSError as err:
            raise PfqError.of(op, err) from None

    def ring(self, slots: int = 0, caplen: int = 0) -> RingInfo:
        """Size the ring (0 keeps a value: the module's default until the ring is made)
        and say its sizes. Only before the first mmap or read; afterwards it may only
        repeat the sizes it has."""
        buf = bytearray(RING_INFO.struct.pack(slots, caplen, 0, 0, 0))
        self._ioctl(f"ring slots={slots} caplen={caplen}", PFQ_IOC_RING, buf)
        self._info = RingInfo(*RING_INFO.struct.unpack(buf))
        return self._info

    def join(self, group: int | None) -> int:
        """Join `group` (0..PFQ_GROUPS-1; None: the lowest with no endpoint, one of its
        own): from now on it steers frames to this ring. The group joined."""
        if group is None:
            self._ioctl("join a free group", PFQ_IOC_JOIN, struct.pack("<I", PFQ_GROUP_ANY))
            joined = self.stats().group
            assert joined is not None
            return joined
        if not 0 <= group < PFQ_GROUPS:
            raise UserError(f"group {group}: expected 0..{PFQ_GROUPS - 1}")
        self._ioctl(f"join group {group}", PFQ_IOC_JOIN, struct.pack("<I", group))
        return group

    def leave(self) -> None:
        self._ioctl("leave", PFQ_IOC_LEAVE)

    def bind(self, dev: str, queue: int = -1) -> None:
        """Feed this endpoint's group with `dev`'s frames (of rx queue `queue`; -1: all)."""
        self._ioctl(f"bind {dev}", PFQ_IOC_BIND, BIND.struct.pack(check_ifname(dev), queue, 0))

    def unbind(self, dev: str, queue: int = -1) -> None:
        self._ioctl(f"unbind {dev}", PFQ_IOC_UNBIND,
                    BIND.struct.pack(check_ifname(dev), queue, 0))

    def steer(self, mode: str, shared: bool = False) -> None:
        """How the group picks the endpoint(s) of a frame: a STEER_MODES name or alias.
        `shared`: only if no member set it yet, or to the same (else EBUSY)."""
        mode = steer_mode(mode)
        flag = PFQ_STEER_SHARED if shared else 0
        self._ioctl(f"steer {mode}", PFQ_IOC_STEER, struct.pack("<I", STEER_MODES[mode] | flag))

    def set_filter(self, program: Program | None, shared: bool = False) -> None:
        """The group's classic BPF program (see `compile_filter`); None or [] removes it.
        `shared`: only if no member set one yet, or to the same program (else EBUSY)."""
        program = list(program or ())
        if len(program) > BPF_MAXINSNS:
            raise UserError(f"a BPF program of {len(program)} instructions: at most "
                            f"{BPF_MAXINSNS}")
        try:
            insns = array.array("B", b"".join(SOCK_FILTER.pack(*i) for i in program))
        except struct.error as err:
            raise UserError(f"a BPF instruction out of range: {err}") from None
        address = insns.buffer_info()[0] if program else 0
        self._ioctl(f"filter ({len(program)} instructions)", PFQ_IOC_FILTER,
                    FILTER.struct.pack(len(program), PFQ_FILTER_SHARED if shared else 0,
                                       address))

    def set_vlan(self, ids: Iterable[int] | None, untagged: bool = False) -> None:
        """Pass only frames tagged with one of `ids` (and untagged ones if `untagged`);
        None lets every frame pass."""
        words = _vlan_bitmap(ids or ()) if ids is not None else [0] * (PFQ_VLAN_IDS // 64)
        self._ioctl("vlan", PFQ_IOC_VLAN,
                    VLAN.struct.pack(int(ids is not None), int(untagged), *words))

    def stats(self) -> EndpointStats:
        buf = bytearray(ENDPOINT_STATS.size)
        self._ioctl("stats", PFQ_IOC_STATS, buf)
        received, delivered, dropped, group, _ = ENDPOINT_STATS.struct.unpack(buf)
        return EndpointStats(received, delivered, dropped,
                             None if group < 0 else group)

    def _mapped(self) -> Ring:
        if self._ring is None:
            info = self._info or self.ring()
            try:
                self._map = mmap.mmap(self.fd, info.mmap_size, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as err:
                raise PfqError.of("mmap", err) from None
            self._ring = Ring(self._map)
        return self._ring

    def wake_after(self, frames: int) -> None:
        """Sleep in poll() and read() until `frames` frames wait (Ring.wake_after)."""
        self._mapped().wake_after(frames)

    def _wait(self, poller: select.poll, deadline: float | None) -> bool:
        """Wait for POLLIN until `deadline` (monotonic; None: forever); False on time out."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        events = poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
        for _, mask in events:
            if mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise PfqError(f"poll says {mask:#x}", op=self.path)
        return bool(events)

    def records(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames as they come, each consumed once yielded. When the ring is empty it
        waits (poll) up to `timeout` seconds for the next one and ends if none came;
        None waits forever. Reads the mapped ring on x86_64, else falls back to read()."""
        if platform.machine() not in ("x86_64", "AMD64"):
            yield from self._read_loop(timeout)
            return
        ring = self._mapped()
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            frame = ring.take()
            if frame is not None:
                yield frame
                continue
            deadline = None if timeout is None else time.monotonic() + timeout
            while not ring.ready():
                if not self._wait(poller, deadline):
                    return

    def _read_loop(self, timeout: float | None) -> Iterator[Frame]:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._wait(poller, deadline):
            frames = self.read_records()
            yield from frames
            if frames and timeout is not None:
                deadline = time.monotonic() + timeout

    def frames(self, timeout: float | None = None) -> Iterator[tuple[int, bytes]]:
        """(timestamp in ns, frame bytes) of each frame, as `records` yields them."""
        for frame in self.records(timeout):
            yield frame.tstamp_ns, frame.data

    def read_records(self) -> list[Frame]:
        """The frames one read() returns: blocks for the first one unless the file is
        non-blocking ([] then). Use this or the mapped ring, not both."""
        info = self._info or self.ring()
        try:
            data = os.read(self.fd, max(1 << 16, FRAME.size + info.caplen))
        except BlockingIOError:
            return []
        except OSError as err:
            raise PfqError.of("read", err) from None
        return parse_records(data)

    def close(self) -> None:
        """Unmap the ring and close the file (idempotent)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- BPF --------------------------------------------------------------------------------

def _tcpdump() -> str:
    # Debian keeps tcpdump in /usr/sbin, which is not on a user's PATH.
    found = shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin")
    if not found:
        raise UserError("a --filter needs tcpdump to compile it (Debian: apt-get install "
                        "tcpdump)")
    return found


def compile_filter(expr: str, snaplen: int = 65535) -> list[tuple[int, int, int, int]]:
    """The classic BPF program of a pcap-filter(7) expression for Ethernet frames, as
    `tcpdump -y EN10MB -ddd` compiles it: libpcap's own compiler, nothing by hand."""
    argv = [_tcpdump(), "-y", "EN10MB", "-s", str(snaplen), "-ddd", "--", expr]
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"filter {expr!r}: could not run tcpdump: {err}") from None
    if run.returncode != 0:
        why = next((line for line in run.stderr.splitlines() if line.strip()),
                   f"tcpdump exited {run.returncode}")
        raise UserError(f"filter {expr!r}: {why}")
    try:
        count, *lines = run.stdout.split("\n")
        program = [(int(c), int(t), int(f), int(k)) for c, t, f, k in
                   (line.split() for line in lines if line.strip())]
        if int(count) != len(program):
            raise ValueError(f"{count} instructions announced, {len(program)} given")
    except ValueError as err:
        raise UserError(f"filter {expr!r}: unexpected output of tcpdump -ddd ({err})") \
            from None
    return program
