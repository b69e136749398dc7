"""Bad requests at volume, while frames flow: run in the hook lab's guest as
`python3 -S -m omatic.lab.fuzzcheck [SEED]`, after omatic.lab.safetycheck.

4 processes each make CALLS calls on /dev/pfq drawn from a seeded generator: every ioctl
with valid and malformed arguments (sizes out of range, unknown devices and modes, BPF
programs the kernel refuses or at bad addresses, NULL arguments), mmap of any length,
read, poll, a garbage tail written into a mapped ring, close, and a child holding an
endpoint killed. Meanwhile the hook test module feeds frames into both devices from both
CPUs, in tap mode. Then, with the endpoints still open and the frames stopped, every
group's counters must add up; after, the kernel log must hold no WARNING, BUG or oops
and pfq.ko's reference count must be back (and /init unloads it cleanly later).

The seed is printed; `fuzzcheck SEED` replays the run (each process draws from SEED + its
index; the frames' timing is not replayed). One KTAP document on stdout. Standard
library and omatic only.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import random
import re
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable

from omatic.lab.groupcheck import (
    DEV,
    DEV2,
    CheckFailed,
    Config,
    counters_add_up,
    dmesg_lines,
    ex1,
    expect,
    group_lines,
    inject,
    run_checks,
)
from omatic.pfq.uapi import (
    BIND,
    ENDPOINT_STATS,
    FILTER,
    PFQ_FILTER_SHARED,
    PFQ_IOC_BIND,
    PFQ_IOC_FILTER,
    PFQ_IOC_JOIN,
    PFQ_IOC_LEAVE,
    PFQ_IOC_RING,
    PFQ_IOC_STATS,
    PFQ_IOC_STEER,
    PFQ_IOC_UNBIND,
    PFQ_IOC_VLAN,
    PFQ_STEER_SHARED,
    RING_HEAD,
    RING_INFO,
    SOCK_FILTER,
    VLAN,
)

PROCESSES = 4
CALLS = 2500
#: Groups the fuzzers use: few, so that they meet in them.
GROUPS = (50, 51, 52)
#: The kernel log's words for a bug of the kernel's own.
BAD = re.compile(r"WARNING|BUG|Oops|general protection|refcount_t|UBSAN|KASAN|stack-protector")
#: A classic BPF program the kernel takes (accept 96 bytes) and one it refuses (a jump
#: out of the program).
GOOD_PROG = [(0x06, 0, 0, 96)]
BAD_PROG = [(0x05, 0, 0, 7), (0x06, 0, 0, 0)]


class Fuzzer:
    """One process's endpoints and the calls it makes on them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.fds: list[int] = []
        self.maps: list[mmap.mmap] = []
        self.children: list[int] = []
        self.programs = [ctypes.create_string_buffer(b"".join(
            SOCK_FILTER.pack(*insn) for insn in prog)) for prog in (GOOD_PROG, BAD_PROG)]
        self.calls: list[Callable[[], object]] = [
            self.open, self.close, self.ring, self.join, self.leave, self.bind, self.steer,
            self.filter, self.vlan, self.stats, self.map, self.read, self.poll, self.tail,
            self.bad_ioctl, self.killed_child]

    def fd(self) -> int:
        if not self.fds or self.rng.random() < 0.05:
            self.open()
        return self.rng.choice(self.fds)

    def open(self) -> None:
        if len(self.fds) < 6:
            self.fds.append(os.open("/dev/pfq", os.O_RDWR | os.O_NONBLOCK))

    def close(self) -> None:
        if self.fds:
            os.close(self.fds.pop(self.rng.randrange(len(self.fds))))

    def ioctl(self, request: int, arg: bytes | bytearray | int) -> None:
        fcntl.ioctl(self.fd(), request, arg)

    def ring(self) -> None:
        slots = self.rng.choice([0, 1, 8, 64, 1024, 1 << 20, (1 << 20) + 1, 1 << 31])
        caplen = self.rng.choice([0, 1, 63, 64, 128, 2048, 65535, 65536])
        self.ioctl(PFQ_IOC_RING, bytearray(RING_INFO.struct.pack(slots, caplen, 0, 0, 0)))

    def join(self) -> None:
        group = self.rng.choice([*GROUPS, 64, 0xFFFFFFFF])
        self.ioctl(PFQ_IOC_JOIN, struct.pack("<I", group))

    def leave(self) -> None:
        self.ioctl(PFQ_IOC_LEAVE, 0)

    def bind(self) -> None:
        name = self.rng.choice([DEV, DEV2, "lo", "nosuchdev", "x" * 16, ""]).encode()
        queue = self.rng.choice([-1, -1, 0, 1, -2, 70000])
        arg = BIND.struct.pack(name[:16].ljust(16, b"\0") if len(name) < 16 else name[:16],
                               queue, 0)
        self.ioctl(self.rng.choice([PFQ_IOC_BIND, PFQ_IOC_UNBIND]), arg)

    def steer(self) -> None:
        mode = self.rng.choice([0, 1, 2, 3, 4, 5, 6, 99])
        self.ioctl(PFQ_IOC_STEER, struct.pack("<I", mode | self.rng.choice([0, PFQ_STEER_SHARED])))

    def filter(self) -> None:
        which = self.rng.randrange(4)
        # Unshared, shared (the first member decides), and a flag that does not exist.
        flags = self.rng.choice([0, 0, PFQ_FILTER_SHARED, 2])
        if which < 2:
            prog = (GOOD_PROG, BAD_PROG)[which]
            arg = FILTER.struct.pack(len(prog), flags, ctypes.addressof(self.programs[which]))
        elif which == 2:
            arg = FILTER.struct.pack(0, flags, 0)  # none
        else:
            arg = FILTER.struct.pack(self.rng.choice([1, 4096, 4097, 1 << 30]), flags,
                                     self.rng.choice([0, 0x1000, 0xFFFF_FFFF_FFFF_0000]))
        self.ioctl(PFQ_IOC_FILTER, arg)

    def vlan(self) -> None:
        words = [self.rng.getrandbits(64) for _ in range(64)]
        self.ioctl(PFQ_IOC_VLAN, VLAN.struct.pack(self.rng.choice([0, 1, 2]),
                                                  self.rng.choice([0, 1, 5]), *words))

    def stats(self) -> None:
        self.ioctl(PFQ_IOC_STATS, bytearray(ENDPOINT_STATS.size))

    def map(self) -> None:
        length = self.rng.choice([4096, 8192, 1 << 20, 1 << 24])
        flags = self.rng.choice([mmap.MAP_SHARED, mmap.MAP_SHARED, mmap.MAP_PRIVATE])
        self.maps.append(mmap.mmap(self.fd(), length, flags,
                                   mmap.PROT_READ | mmap.PROT_WRITE))
        if len(self.maps) > 4:
            self.maps.pop(0).close()

    def read(self) -> None:
        os.read(self.fd(), self.rng.choice([0, 16, 4096, 1 << 16]))

    def poll(self) -> None:
        poller = select.poll()
        poller.register(self.fd(), select.POLLIN)
        poller.poll(0)

    def tail(self) -> None:
        """The reader's tail, in a mapped ring, set to anything."""
        if self.maps:
            value = self.rng.choice([0, 1, 1 << 63, self.rng.getrandbits(64)])
            struct.pack_into("<Q", self.rng.choice(self.maps), RING_HEAD.offset("tail"), value)

    def bad_ioctl(self) -> None:
        request = self.rng.choice([PFQ_IOC_RING, PFQ_IOC_BIND, PFQ_IOC_FILTER, PFQ_IOC_VLAN,
                                   PFQ_IOC_STATS, 0xF9FF, 0x5401])
        self.ioctl(request, 0)  # a NULL argument

    def killed_child(self) -> None:
        """A process with an endpoint in a group, bound, killed with its ring mapped."""
        if len(self.children) > 2:
            os.kill(self.children.pop(0), signal.SIGKILL)
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open("/dev/pfq", os.O_RDWR)
                fcntl.ioctl(fd, PFQ_IOC_JOIN, struct.pack("<I", self.rng.choice(GROUPS)))
                fcntl.ioctl(fd, PFQ_IOC_BIND, BIND.struct.pack(DEV.encode().ljust(16, b"\0"),
                                                               -1, 0))
                mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
            except OSError:
                pass
            time.sleep(60)
            os._exit(0)
        self.children.append(pid)

    def run(self, calls: int) -> dict[str, int]:
        """Make `calls` calls; how many the kernel refused, by errno name."""
        refused: dict[str, int] = {}
        for _ in range(calls):
            call = self.rng.choice(self.calls)
            try:
                call()
            except OSError as err:
                name = os.strerror(err.errno) if err.errno else "?"
                refused[name] = refused.get(name, 0) + 1
        return refused

    def finish(self) -> None:
        for pid in self.children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for m in self.maps:
            m.close()
        for fd in self.fds:
            os.close(fd)


def _fuzz(seed: int, calls: int, done_w: int, go_r: int) -> None:
    """A fuzzing process: wait for a first byte on `go_r` (the frames flow), make the
    calls, say 'ok' (or why not) on `done_w`, wait for a second byte with its endpoints
    open, then close them all."""
    os.read(go_r, 1)
    fuzzer = Fuzzer(random.Random(seed))
    try:
        refused = fuzzer.run(calls)
        os.write(done_w, f"ok {sum(refused.values())}\n".encode())
    except BaseException as err:  # a bug of the fuzzer's: said, not raised
        os.write(done_w, f"error {err!r}\n".encode()[:500])
    os.read(go_r, 1)
    fuzzer.finish()


def _feed(dev: str, cpu: int, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
        n = 0
        while not stop.is_set():
            inject(dev, ex1(64, start=900_000 + n))
            n += 64
    except BaseException as err:  # reported by the check
        errors.append(err)


def check_fuzz(seed: int, calls: int = CALLS) -> Callable[[Config], None]:
    def check(config: Config) -> None:
        before = len(dmesg_lines())
        # The fuzzers are forked before any thread starts: a child forked while another
        # thread holds a lock would wait on it forever.
        procs, dones, gos = [], [], []
        for i in range(PROCESSES):
            done_r, done_w = os.pipe()
            go_r, go_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    _fuzz(seed + i, calls, done_w, go_r)
                finally:
                    os._exit(0)
            os.close(done_w)
            os.close(go_r)
            procs.append(pid)
            dones.append(done_r)
            gos.append(go_w)
        stop, errors = threading.Event(), list[BaseException]()
        feeders = [threading.Thread(target=_feed, args=(dev, cpu, stop, errors))
                   for cpu, dev in enumerate((DEV, DEV2))]
        for feeder in feeders:
            feeder.start()
        try:
            for fd in gos:
                os.write(fd, b"g")
            said = [os.read(fd, 600).decode() for fd in dones]
        finally:
            stop.set()
            for feeder in feeders:
                feeder.join()
        try:
            bad = [s for s in said if not s.startswith("ok")]
            expect(not bad, f"seed {seed}: a fuzzer failed: {bad}")
            expect(not errors, f"seed {seed}: feeding failed: {errors[:1]}")
            # One read: the fuzzers' killed children leave their groups meanwhile.
            groups = group_lines()
            for g in groups:
                counters_add_up(int(g["group"]), g)
        finally:
            for fd in gos:
                os.write(fd, b"g")
            for pid in procs:
                os.waitpid(pid, 0)
        oops = [line for line in dmesg_lines()[before:] if BAD.search(line)]
        expect(not oops, f"seed {seed}: the kernel log says: {oops[:3]}")
        print(f"fuzz: seed {seed}, {PROCESSES} x {calls} calls, refused "
              f"{sum(int(s.split()[1]) for s in said)}, {len(groups)} groups",
              file=sys.stderr, flush=True)
    return check


def main(argv: Iterable[str]) -> int:
    args = list(argv)
    seed = int(args[0]) if args else random.SystemRandom().randrange(1 << 32)
    print(f"fuzz: seed {seed} (replay: python3 -m omatic.lab.fuzzcheck {seed})",
          file=sys.stderr, flush=True)
    try:
        lines = run_checks([("bad_requests_at_volume", check_fuzz(seed))], {})
    except CheckFailed as err:
        lines = ["KTAP version 1", "1..1", f"not ok 1 bad_requests_at_volume # {err}"]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
