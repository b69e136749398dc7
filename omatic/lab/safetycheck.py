"""pfq.ko's guards proven in a guest: run there as `python3 -S -m omatic.lab.safetycheck`.

The hook lab's guest (omatic.lab.hooks) has pfq.ko (with ring_memory_max=RING_MEMORY_MAX)
and the hook test module loaded, after omatic.lab.groupcheck has run. Each check here is
one way a user without privilege, or a careless reader, could hurt the machine through
pfq.ko, driven from user space as they would: rings from inside a user namespace, ring
memory past RLIMIT_MEMLOCK or the module's cap, read() racing mmap() on one endpoint,
two readers of one endpoint, concurrent reads of one pcap file, a device's frames kept
for its pcap file only while someone has it open, the control file from
a root process without CAP_NET_ADMIN, and configuration calls that once waited for RCU
grace periods under RTNL and global mutexes, timed against `ip link add`/`del` and a
misc device's open. Each fails on a pfq.ko without its guard. The results are one KTAP
document on stdout; figures go to stderr.

Standard library and omatic only: the guest's python3 has nothing else. Users are
switched with util-linux's setpriv, staged into the guest (busybox's cannot change uid).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import resource
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

from omatic.lab.frames import read_pcap
from omatic.lab.groupcheck import (
    DEV,
    DEV2,
    PROC,
    CheckFailed,
    dmesg_lines,
    ex1,
    expect,
    group,
    inject,
    run_checks,
    set_mode,
)
from omatic.lab.guestpy import PACKAGE_DIR
from omatic.pfq.endpoint import Endpoint, PfqError, parse_records
from omatic.pfq.uapi import FRAME

#: util-linux's setpriv, staged into the guest (omatic.lab.guestpy.stage_program).
SETPRIV = "/usr/bin/setpriv"
#: setpriv's options that make a process the user nobody, with no group.
NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")
#: pfq.ko's ring_memory_max in the guest, MiB (omatic.lab.hooks loads it so).
RING_MEMORY_MAX = 48
#: pfq.ko's ring_slots in the guest: the device's pcap ring holds this many frames.
DEVICE_SLOTS = 64
#: Another misc device, for the time its open takes (misc_open holds misc_mtx).
OTHER_MISC = Path("/dev/cpu_dma_latency")
#: A dummy device's name for the RTNL timings.
DUMMY = "pfqlat0"

Config = dict[str, object]


def python(code: str, prefix: Sequence[str] = (), args: Sequence[str] = (),
           preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in the guest's Python under `prefix` (setpriv, unshare...)."""
    env = {"PATH": "/bin:/usr/bin:/sbin:/usr/sbin", "PYTHONPATH": PACKAGE_DIR}
    return subprocess.run([*prefix, sys.executable, "-S", "-c", code, *args], env=env,
                          capture_output=True, text=True, check=False, timeout=120,
                          preexec_fn=preexec)


def said(run: subprocess.CompletedProcess[str]) -> str:
    return f"{run.stdout.strip()} {run.stderr.strip()[-300:]}".strip()


def memory() -> dict[str, int]:
    """/proc/net/pfq/memory as numbers: rings, bytes, limit."""
    text = (PROC / "memory").read_text()
    return {k: int(v) for k, v in (item.split("=") for item in text.split())}


#: What a process prints of opening /dev/pfq: its euid, then `opened` or the errno.
OPEN_CODE = ("import os\nfrom omatic.pfq.endpoint import Endpoint, PfqError\n"
             "try:\n    Endpoint().close(); what = 'opened'\n"
             "except PfqError as err:\n    what = 'EPERM' if 'EPERM' in str(err) else str(err)\n"
             "print(os.geteuid(), what)\n")


def check_user_namespace(config: Config) -> None:
    """nobody, made root of a user namespace of its own (`unshare -r -n`), and nobody as
    it is: both EPERM. A namespace's root must not pin kernel memory nor take groups."""
    inside = python(OPEN_CODE, [SETPRIV, *NOBODY, "unshare", "-r", "-n"])
    expect(inside.returncode == 0 and inside.stdout.split() == ["0", "EPERM"],
           f"root of a user namespace: {said(inside)} (expected '0 EPERM')")
    plain = python(OPEN_CODE, [SETPRIV, *NOBODY])
    expect(plain.returncode == 0 and plain.stdout.split() == ["65534", "EPERM"],
           f"nobody: {said(plain)} (expected '65534 EPERM')")


def check_memlock(config: Config) -> None:
    """nobody with CAP_NET_RAW alone (as a capture program with file capabilities) and
    RLIMIT_MEMLOCK of 1 MiB: a ring of 2 MiB is refused (ENOBUFS), one of 133 KiB made."""
    code = ("from omatic.pfq.endpoint import Endpoint, PfqError\n"
            "for name, slots in (('big', 1024), ('small', 64)):\n"
            "    try:\n        Endpoint().ring(slots=slots, caplen=2048); print(name, 'made')\n"
            "    except PfqError as err:\n"
            "        print(name, 'ENOBUFS' if 'ENOBUFS' in str(err) else err)\n")
    limit = 1 << 20

    def memlock() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))

    run = python(code, [SETPRIV, *NOBODY, "--inh-caps=+net_raw", "--ambient-caps=+net_raw"],
                 preexec=memlock)
    expect(run.returncode == 0 and run.stdout.split() == ["big", "ENOBUFS", "small", "made"],
           f"RLIMIT_MEMLOCK 1 MiB: {said(run)} (expected big ENOBUFS, small made)")


def check_memory_cap(config: Config) -> None:
    """/proc/net/pfq/memory counts each ring's bytes while it lives, and the module's cap
    refuses a ring that would pass it (ENOBUFS), until another ring goes."""
    before = memory()
    expect(before["limit"] == RING_MEMORY_MAX << 20,
           f"limit={before['limit']}, pfq.ko was loaded with ring_memory_max="
           f"{RING_MEMORY_MAX}")
    slots = (RING_MEMORY_MAX << 20) * 6 // 10 // (FRAME.size + 65535 + 1)
    with Endpoint() as first:
        info = first.ring(slots=slots, caplen=65535)
        held = memory()
        expect(held["bytes"] - before["bytes"] == info.mmap_size and
               held["rings"] == before["rings"] + 1,
               f"a ring of {info.mmap_size} bytes: memory went from {before} to {held}")
        with Endpoint() as second:
            try:
                second.ring(slots=slots, caplen=65535)
                raise CheckFailed(f"two rings of {info.mmap_size} bytes passed the cap "
                                  f"of {RING_MEMORY_MAX} MiB")
            except PfqError as err:
                expect("ENOBUFS" in str(err), f"over the cap: {err}, not ENOBUFS")
    expect(memory() == before, f"after close: {memory()}, before: {before}")
    with Endpoint() as again:
        again.ring(slots=slots, caplen=65535)


def check_read_racing_mmap(config: Config) -> None:
    """One thread read()s into a buffer not yet faulted in while another mmap()s the
    same endpoint, over and over: a read holding a lock that mmap() takes under
    mmap_lock, across the copy whose fault needs mmap_lock, would deadlock here."""
    with ExitStack() as stack:
        (ep,) = group(stack, 1, 19, "copy", slots=64)
        size = ep.ring(slots=64).mmap_size
        stop = threading.Event()

        def mapper() -> None:
            while not stop.is_set():
                mmap.mmap(ep.fd, size, mmap.MAP_SHARED, mmap.PROT_READ).close()

        mapping = threading.Thread(target=mapper, daemon=True)
        mapping.start()
        rounds, deadline = 0, time.monotonic() + 4
        try:
            while time.monotonic() < deadline:
                inject(DEV, ex1(4, start=40000 + 4 * rounds))
                buf = mmap.mmap(-1, 1 << 16)  # anonymous: its pages come at first touch
                reader = threading.Thread(target=os.readv, args=(ep.fd, [buf]), daemon=True)
                reader.start()
                reader.join(20)
                expect(not reader.is_alive(), f"read() did not return in round {rounds}: "
                                              "deadlocked with mmap()")
                rounds += 1
        finally:
            stop.set()
        mapping.join(20)
        expect(not mapping.is_alive(), "mmap() did not return: deadlocked with read()")
    print(f"safety: read racing mmap: {rounds} rounds", file=sys.stderr)


def check_two_readers(config: Config) -> None:
    """Two threads block in read() on one endpoint, frames come one at a time: each
    read() returns a frame, never 0 (end of file) for one the other reader took. The
    ring has room for every frame, so a reader that never gets its last one was not
    woken: the endpoint's counters, in the message, show that none was dropped."""
    body, ends = ex1(150, start=50000), ex1(2, start=60000)
    got: list[list[bytes]] = [[], []]
    zeros: list[int] = []
    with ExitStack() as stack:
        ep = stack.enter_context(Endpoint())
        ep.ring(slots=256, caplen=64)
        ep.join(20)
        ep.bind(DEV)

        def reader(i: int) -> None:
            while True:
                data = os.read(ep.fd, FRAME.size + 64)  # room for one record only
                if not data:
                    zeros.append(i)
                    return
                for frame in parse_records(data):
                    got[i].append(frame.data)
                    if frame.data in ends:
                        return

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for frame in body:
            inject(DEV, [frame])
        inject(DEV, ends)
        for thread in threads:
            thread.join(30)
        expect(not zeros, f"read() returned 0 to reader(s) {zeros} with the file open")
        expect(not any(t.is_alive() for t in threads),
               f"a reader never got its last frame (got {len(got[0])} + {len(got[1])}; "
               f"endpoint {ep.stats()})")
    expect(sorted(got[0] + got[1]) == sorted(body + ends),
           f"the readers got {len(got[0])} + {len(got[1])} frames of {len(body) + 2}")


#: io_uring on x86_64: the two system calls, the offsets of its three mappings, and what
#: a read needs (linux/io_uring.h: IORING_OP_READ and IOSQE_ASYNC since 5.6).
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER = 425, 426
IORING_OFF_SQ_RING, IORING_OFF_CQ_RING, IORING_OFF_SQES = 0, 0x8000000, 0x10000000
IORING_OP_READ, IOSQE_ASYNC, IORING_ENTER_GETEVENTS = 22, 1 << 4, 1


def uring_reads(fd: int, size: int, n: int) -> list[bytes]:
    """`n` reads of `size` bytes of `fd` at its file position, submitted to io_uring at
    once, each sent to a worker thread (IOSQE_ASYNC): they run side by side without the
    file position lock that serialises read() calls. What each returned, in order of
    submission. The standard library has no io_uring: ctypes makes the system calls."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    ring = libc.syscall(SYS_IO_URING_SETUP, n, params)
    if ring < 0:
        raise OSError(ctypes.get_errno(), f"io_uring_setup: {os.strerror(ctypes.get_errno())}")
    sq_entries, cq_entries = struct.unpack_from("<II", params, 0)
    _, sq_tail, sq_mask_at, _, _, _, sq_array = struct.unpack_from("<7I", params, 40)
    cq_head, cq_tail, cq_mask_at, _, _, cqes = struct.unpack_from("<6I", params, 80)
    bufs = [ctypes.create_string_buffer(size) for _ in range(n)]
    with ExitStack() as stack:
        stack.callback(os.close, ring)

        def mapping(length: int, offset: int) -> mmap.mmap:
            m = mmap.mmap(ring, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                          offset=offset)
            stack.callback(m.close)
            return m

        sq = mapping(sq_array + 4 * sq_entries, IORING_OFF_SQ_RING)
        cq = mapping(cqes + 16 * cq_entries, IORING_OFF_CQ_RING)
        sqes = mapping(64 * sq_entries, IORING_OFF_SQES)
        # The params give where each field is; the masks are read from the rings.
        sq_mask = struct.unpack_from("<I", sq, sq_mask_at)[0]
        cq_mask = struct.unpack_from("<I", cq, cq_mask_at)[0]
        tail = struct.unpack_from("<I", sq, sq_tail)[0]
        for i, buf in enumerate(bufs):
            slot = (tail + i) & sq_mask
            # struct io_uring_sqe: opcode, flags, ioprio, fd, off (-1: the file position),
            # addr, len, rw_flags, user_data.
            struct.pack_into("<BBHiQQIIQ", sqes, 64 * slot, IORING_OP_READ, IOSQE_ASYNC, 0,
                             fd, 2**64 - 1, ctypes.addressof(buf), size, 0, i)
            struct.pack_into("<I", sq, sq_array + 4 * slot, slot)
        struct.pack_into("<I", sq, sq_tail, tail + n)
        done = libc.syscall(SYS_IO_URING_ENTER, ring, n, n, IORING_ENTER_GETEVENTS, None, 0)
        if done != n:
            raise OSError(ctypes.get_errno(), f"io_uring_enter submitted {done} of {n}")
        results: dict[int, int] = {}
        head = struct.unpack_from("<I", cq, cq_head)[0]
        while len(results) < n:
            if head == struct.unpack_from("<I", cq, cq_tail)[0]:
                libc.syscall(SYS_IO_URING_ENTER, ring, 0, 1, IORING_ENTER_GETEVENTS, None, 0)
                continue
            user_data, res = struct.unpack_from("<Qi", cq, cqes + 16 * (head & cq_mask))
            results[user_data] = res
            head += 1
            struct.pack_into("<I", cq, cq_head, head)
    for res in results.values():
        if res < 0:
            raise OSError(-res, f"an io_uring read: {os.strerror(-res)}")
    return [bufs[i].raw[:results[i]] for i in range(n)]


def check_pcap_concurrent_reads(config: Config) -> None:
    """Reads of one /proc/net/pfq/pcap/DEV file running side by side (io_uring's async
    reads, which the file position lock does not serialise), 16 records each: every read
    whole records (the stream stays aligned after the header) and each frame once, over
    many rounds. Without a lock per open file, they take frames into the one record
    buffer at once and hand out its bytes twice, or from past its end. The file is opened
    before the frames come: pfq.ko keeps them only while it is open."""
    path = PROC / "pcap" / DEV
    record = 16 + 60
    for round_ in range(16):
        sent = ex1(DEVICE_SLOTS, start=70000 + 100 * round_)
        fd = os.open(path, os.O_RDONLY)
        try:
            inject(DEV, sent)
            expect(len(os.read(fd, 24)) == 24, "no pcap header")
            reads = uring_reads(fd, 16 * record, 8)
        finally:
            os.close(fd)
        data = b"".join(reads)
        records = [data[i:i + record] for i in range(0, len(data), record)]
        bad = [r for r in records if r[8:16] != bytes.fromhex("3c0000003c000000")]
        expect(all(len(r) % record == 0 for r in reads) and not bad,
               f"round {round_}: reads of {[len(r) for r in reads]} bytes, {len(bad)} "
               "records not of a 60-byte frame")
        expect(sorted(r[16:] for r in records) == sorted(sent),
               f"round {round_}: the reads hold {len(records)} frames, not the "
               f"{len(sent)} sent, each once")


#: The device counters of /proc/net/pfq/stats.
COUNTERS = ("packets", "to_stack", "captured", "dropped")


def device_counters(dev: str) -> dict[str, int]:
    """`dev`'s counters in /proc/net/pfq/stats, summed over its hooks."""
    sums = dict.fromkeys(COUNTERS, 0)
    for line in (PROC / "stats").read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split())
        if fields.get("dev") == dev:
            for key in COUNTERS:
                sums[key] += int(fields[key])
    return sums


def counted(since: dict[str, int], dev: str = DEV) -> dict[str, int]:
    """What `dev`'s counters counted since `since`."""
    now = device_counters(dev)
    return {key: now[key] - since[key] for key in COUNTERS}


def queued(dev: str = DEV) -> int:
    """The frames `dev`'s pcap ring holds, as /proc/net/pfq/control says."""
    for line in (PROC / "control").read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split())
        if fields.get("dev") == dev:
            return int(fields["queued"])
    raise CheckFailed(f"{dev} is not in {PROC / 'control'}")


def read_to_end(fd: int) -> list[bytes]:
    """The frames of a pcap file read from `fd` to its end."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return read_pcap(b"".join(chunks))


def check_pcap_only_while_open(config: Config) -> None:
    """pfq.ko keeps a device's frames for its pcap file only while someone has it open,
    in tap mode: frames fed with the file closed are not copied (queued stays, and
    /proc/net/pfq/stats counts them neither captured nor dropped) nor in a later read;
    frames fed while it is open are in it, each once, and a second reader opening
    meanwhile empties nothing; what the last reader left unread is gone once the next
    one opens. In capture mode a frame fed with no reader is lost: counted as dropped,
    so that packets = captured + dropped. On a pfq.ko that copies every frame, the
    unread ones show in queued, captured and the reads."""
    path = PROC / "pcap" / DEV
    unread, first_only, both, left, unread_again, last = (
        ex1(10, start=80000 + 100 * i) for i in range(6))
    start = device_counters(DEV)
    held = queued()
    inject(DEV, unread)
    expect(queued() == held, f"with the file closed, the ring went from {held} frames to "
                             f"{queued()}")
    nothing = {"packets": 10, "to_stack": 10, "captured": 0, "dropped": 0}
    expect(counted(start) == nothing, f"10 tap-mode frames nobody reads counted "
                                      f"{counted(start)}, expected {nothing}")
    first, second = os.open(path, os.O_RDONLY), -1
    try:
        inject(DEV, first_only)
        second = os.open(path, os.O_RDONLY)
        inject(DEV, both)
        got, got_second = read_to_end(first), read_to_end(second)
        os.close(first)
        first = -1
        inject(DEV, left)  # the second still has the file open
    finally:
        for fd in (first, second):
            if fd >= 0:
                os.close(fd)
    expect(got == first_only + both, f"the first reader read {len(got)} frames, not the 20 "
                                     "fed while it had the file open (in order, each once)")
    expect(got_second == [], f"the second reader read {len(got_second)} frames the first "
                             "had taken")
    expect(queued() == len(left), f"the last reader left {queued()} frames, not {len(left)}")
    inject(DEV, unread_again)
    expect(queued() == len(left), f"with the file closed, the ring went from {len(left)} "
                                  f"frames to {queued()}")
    third = os.open(path, os.O_RDONLY)
    try:
        inject(DEV, last)
        got = read_to_end(third)
    finally:
        os.close(third)
    expect(got == last, f"the next reader read {len(got)} frames, not the 10 fed while it "
                        "had the file open (frames from before its open, or lost)")
    want = {"packets": 60, "to_stack": 60, "captured": 40, "dropped": 0}
    expect(counted(start) == want, f"60 tap-mode frames, 40 fed with the file open, "
                                   f"counted {counted(start)}, expected {want}")
    start = device_counters(DEV)
    set_mode(DEV, "capture")
    try:
        stack = inject(DEV, ex1(10, start=80600))["stack"]
    finally:
        set_mode(DEV, "tap")
    lost = {"packets": 10, "to_stack": 0, "captured": 0, "dropped": 10}
    expect(stack == 0 and counted(start) == lost,
           f"10 capture-mode frames nobody reads: {stack} reached the stack, counted "
           f"{counted(start)}, expected {lost}")
    expect(queued() == 0, f"capture with no reader left {queued()} frames in the ring")


def check_control_needs_net_admin(config: Config) -> None:
    """A root process without CAP_NET_ADMIN cannot switch a device's mode: EPERM, and
    the mode stays; root with it can."""
    control = str(PROC / "control")
    code = ("import os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\n"
            "try:\n    os.write(fd, sys.argv[2].encode()); print('written')\n"
            "except PermissionError:\n    print('EPERM')\n")
    run = python(code, [SETPRIV, "--bounding-set=-net_admin", "--inh-caps=-net_admin"],
                 args=[control, f"{DEV2} capture\n"])
    mode = next((line for line in Path(control).read_text().splitlines()
                 if line.startswith(f"dev={DEV2} ")), "")
    expect(run.stdout.split() == ["EPERM"], f"without CAP_NET_ADMIN: {said(run)}")
    expect(" mode=tap " in mode, f"the mode changed: {mode}")
    Path(control).write_text(f"{DEV2} tap\n")


def check_small_guards(config: Config) -> None:
    """A private mapping of a ring is refused (the reader's tail would never reach the
    kernel); an ioctl /dev/pfq does not know is ENOTTY with nothing in the kernel log;
    /proc/net/pfq/groups, which names every endpoint's process, is root's alone."""
    with Endpoint() as ep:
        size = ep.ring(slots=8, caplen=64).mmap_size
        try:
            mmap.mmap(ep.fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ).close()
            raise CheckFailed("a MAP_PRIVATE mapping of the ring was accepted")
        except OSError as err:
            expect(err.errno == errno.EINVAL, f"MAP_PRIVATE: {err}, not EINVAL")
        before = len(dmesg_lines())
        try:
            fcntl.ioctl(ep.fd, 0xF9FF, b"\0" * 8)
            raise CheckFailed("an unknown ioctl was accepted")
        except OSError as err:
            expect(err.errno == errno.ENOTTY, f"an unknown ioctl: {err}, not ENOTTY")
        expect(len(dmesg_lines()) == before, "an unknown ioctl wrote to the kernel log")
    code = ("import sys\ntry:\n    open(sys.argv[1]).read(); print('read')\n"
            "except PermissionError:\n    print('EACCES')\n")
    run = python(code, [SETPRIV, *NOBODY], args=[str(PROC / "groups")])
    expect(run.stdout.split() == ["EACCES"], f"nobody reading {PROC / 'groups'}: {said(run)}")


#: A process that joins, steers and leaves a group (and opens /dev/pfq again) for
#: argv[1] seconds, then prints how many rounds it made.
LOOP_CODE = """
import sys, time
from omatic.pfq.endpoint import Endpoint
ep = Endpoint(); ep.ring(slots=1, caplen=64)
rounds, end = 0, time.monotonic() + float(sys.argv[1])
print('ready', flush=True)
while time.monotonic() < end:
    ep.join(21); ep.steer('rr'); ep.steer('copy'); ep.leave()
    Endpoint().close()
    rounds += 1
print(rounds)
"""


def timings(seconds: float) -> dict[str, list[float]]:
    """Milliseconds of `ip link add` + `del` of a dummy device and of an open of another
    misc device, taken in turns for `seconds`."""
    out: dict[str, list[float]] = {"ip_link_add_del": [], "misc_open": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        for verb in ("add", "del"):
            argv = ["ip", "link", verb, DUMMY] + (["type", "dummy"] if verb == "add" else [])
            run = subprocess.run(argv, capture_output=True, text=True, check=False)
            expect(run.returncode == 0, f"{' '.join(argv)}: {run.stderr.strip()}")
        out["ip_link_add_del"].append(1000 * (time.monotonic() - start))
        for _ in range(5):
            start = time.monotonic()
            os.close(os.open(OTHER_MISC, os.O_RDONLY))
            out["misc_open"].append(1000 * (time.monotonic() - start))
    return out


def summary(ms: Iterable[float]) -> str:
    values = sorted(ms)
    return (f"median {statistics.median(values):.1f} ms, max {values[-1]:.1f} ms "
            f"({len(values)})")


def check_no_grace_period_under_locks(config: Config) -> None:
    """A process joins, steers and leaves a group as fast as it can while this one times
    `ip link add`/`del` and another misc device's open. Configuration calls that waited
    for an RCU grace period each (under RTNL, pfq's global mutex, and misc_mtx through
    /dev/pfq's open) made a few dozen rounds a second and stretched both timings; now a
    round waits for none."""
    seconds = 4.0
    idle = timings(seconds)
    loop = subprocess.Popen([sys.executable, "-S", "-c", LOOP_CODE, str(seconds + 1)],
                            env={"PYTHONPATH": PACKAGE_DIR}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        expect(loop.stdout is not None and loop.stdout.readline().strip() == "ready",
               "the configuration loop did not start")
        busy = timings(seconds)
        out, err = loop.communicate(timeout=120)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    expect(loop.returncode == 0 and out.strip().isdigit(), f"the loop failed: {err[-300:]}")
    rate = int(out) / (seconds + 1)
    for name in idle:
        print(f"safety: {name}: idle {summary(idle[name])}; with the loop "
              f"{summary(busy[name])}", file=sys.stderr)
    print(f"safety: configuration loop: {rate:.0f} rounds/s", file=sys.stderr)
    # Each round is join, two steers and leave: four grace periods before, none now.
    expect(rate >= 100, f"the configuration loop made {rate:.0f} rounds/s (at least 100 "
                        "when no call waits for a grace period)")
    # Sanity ceilings on the medians, not the worst samples: the loop takes one of the
    # guest's two CPUs from `ip` meanwhile, and in `make matrix` another guest shares the
    # machine, so a single sample may wait for the host. A configuration call that held
    # RTNL or misc_mtx across grace periods would move the median, not one sample.
    for name, slack in (("ip_link_add_del", 50.0), ("misc_open", 10.0)):
        usual, loaded = statistics.median(idle[name]), statistics.median(busy[name])
        ceiling = 2 * usual + slack
        expect(loaded <= ceiling, f"{name}: median {loaded:.1f} ms with the loop, "
                                  f"{usual:.1f} ms without (at most {ceiling:.0f} ms)")


CHECKS: list[tuple[str, Callable[[Config], None]]] = [
    ("user_namespace_root_eperm", check_user_namespace),
    ("memlock_charged", check_memlock),
    ("memory_counted_and_capped", check_memory_cap),
    ("read_racing_mmap_returns", check_read_racing_mmap),
    ("two_readers_never_read_0", check_two_readers),
    ("pcap_concurrent_reads_whole", check_pcap_concurrent_reads),
    ("pcap_kept_only_while_open", check_pcap_only_while_open),
    ("control_needs_cap_net_admin", check_control_needs_net_admin),
    ("no_grace_period_under_locks", check_no_grace_period_under_locks),
    ("private_map_ioctl_groups_file", check_small_guards),
]


def main(argv: Iterable[str]) -> int:
    if list(argv):
        print("usage: python3 -m omatic.lab.safetycheck", file=sys.stderr)
        return 1
    print("\n".join(run_checks(CHECKS, {})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
