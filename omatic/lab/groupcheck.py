"""PFQ's groups proven in a guest: run there as `python3 -S -m omatic.lab.groupcheck CONFIG`.

The hook lab's guest (omatic.lab.hooks) has pfq.ko and the hook test module loaded; the
module's devices (hk-gro: napi_gro_receive, hk-rcv-skb: netif_receive_skb) take frames
written to /proc/pfq_hooktest_inject and feed them through the accelerated driver's hooks
from NAPI poll. Each check here opens endpoints of /dev/pfq as a user would (omatic.pfq.endpoint),
injects frames, reads the rings and compares with what was sent; the results are one KTAP
document on stdout. CONFIG is a JSON file the host wrote: the BPF program of
`udp and dst port 9`, compiled there by tcpdump (the guest has no libpcap).

Standard library and omatic.pfq only: the guest's python3 has nothing else.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omatic.lab.frames import checksum, read_pcap
from omatic.pfq.endpoint import Endpoint, PfqError
from omatic.pfq.uapi import FILTER, PFQ_IOC_FILTER, PFQ_IOC_JOIN, PFQ_IOC_STEER

INJECT = Path("/proc/pfq_hooktest_inject")
#: This machine's tcpdump, staged into the guest (omatic.lab.guestpy.stage_program).
TCPDUMP = "/usr/bin/tcpdump"
PROC = Path("/proc/net/pfq")
#: The device most checks use (napi_gro_receive: the MAC header is pulled, so BPF needs
#: it pushed back) and a second one (netif_receive_skb).
DEV, DEV2 = "hk-gro", "hk-rcv-skb"
GUEST_MAC = bytes.fromhex("020000000103")
PEER_MAC = bytes.fromhex("02000000aa01")
#: Ethertype the hook test module's stack end counts (local experimental 1).
ETH_EX1 = 0x88B5


#: What the host passes: {"udp_dst_9": [[code, jt, jf, k], ...]}.
Config = dict[str, Any]


class CheckFailed(Exception):
    pass


def expect(cond: bool, why: str) -> None:
    if not cond:
        raise CheckFailed(why)


# --- frames -------------------------------------------------------------------------------

def eth(payload: bytes, ethertype: int, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    frame = GUEST_MAC + PEER_MAC + tag + struct.pack("!H", ethertype) + payload
    return frame + b"\0" * max(0, 60 - len(frame))


def l4(proto: int, sport: int, dport: int, seq: int) -> bytes:
    body = struct.pack("!I", seq) + bytes((seq * 7 + i) & 0xFF for i in range(12))
    if proto == 6:  # TCP: no options, ACK
        return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x10, 8192, 0, 0) + body
    return struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body


def ipv4(src: int, dst: int, proto: int, sport: int, dport: int, seq: int,
         vlan: int | None = None) -> bytes:
    seg = l4(proto, sport, dport, seq)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), seq & 0xFFFF, 0, 64, proto, 0,
                      bytes([192, 0, 2, src]), bytes([192, 0, 2, dst]))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return eth(hdr + seg, 0x0800, vlan)


def ipv6(src: int, dst: int, proto: int, sport: int, dport: int, seq: int) -> bytes:
    seg = l4(proto, sport, dport, seq)
    prefix = bytes.fromhex("20010db8000000000000000000000000")  # 2001:db8::/32, RFC 3849
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(seg), proto, 64,
                      prefix[:15] + bytes([src]), prefix[:15] + bytes([dst]))
    return eth(hdr + seg, 0x86DD)


def flows(n: int, per_direction: int) -> tuple[list[bytes], dict[bytes, int]]:
    """`n` flows (IPv4 and IPv6, TCP and UDP), `per_direction` frames each way,
    interleaved; and the flow of each frame."""
    out: list[tuple[int, bytes]] = []
    flow_of: dict[bytes, int] = {}
    seq = 0
    for f in range(n):
        proto = 6 if f % 2 else 17
        a, b = 10 + f % 100, 200 - f % 50
        sport, dport = 1024 + f * 7, 80 + f % 3
        for i in range(per_direction):
            for forward in (True, False):
                seq += 1
                if f % 4 < 2:
                    frame = (ipv4(a, b, proto, sport, dport, seq) if forward else
                             ipv4(b, a, proto, dport, sport, seq))
                else:
                    frame = (ipv6(a, b, proto, sport, dport, seq) if forward else
                             ipv6(b, a, proto, dport, sport, seq))
                out.append((i * n + f, frame))
                flow_of[frame] = f
    out.sort(key=lambda item: item[0])
    return [frame for _, frame in out], flow_of


def ex1(n: int, start: int = 0) -> list[bytes]:
    """Frames of the ethertype the stack end of the hook test module counts."""
    return [eth(struct.pack("!I", start + i) + bytes(range(20)), ETH_EX1) for i in range(n)]


# --- the guest's machinery ----------------------------------------------------------------

def inject(dev: str, frames: Sequence[bytes],
           queues: Sequence[int] | None = None) -> dict[str, int]:
    """Feed `frames` through `dev`'s entry point; what the module says it did."""
    return inject_written(dev, inject_request(dev, frames, queues))


def inject_request(dev: str, frames: Sequence[bytes],
                   queues: Sequence[int] | None = None) -> bytes:
    """What inject() writes to the module, built ahead where the write is timed."""
    out = [dev.encode().ljust(16, b"\0")]
    for i, frame in enumerate(frames):
        queue = 0xFFFF if queues is None else queues[i]
        out.append(struct.pack("<HH", len(frame), queue) + frame)
    return b"".join(out)


def inject_written(dev: str, request: bytes) -> dict[str, int]:
    """Write an inject_request() for `dev`; what the module says it did."""
    fd = os.open(INJECT, os.O_WRONLY)
    try:
        os.write(fd, request)
    finally:
        os.close(fd)
    line = next(line for line in INJECT.read_text().splitlines()
                if line.startswith(f"dev={dev} "))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def set_mode(dev: str, mode: str) -> None:
    (PROC / "control").write_text(f"{dev} {mode}\n")


def group_lines() -> list[dict[str, str]]:
    """The groups of /proc/net/pfq/groups (its lines that start with group=; those of
    the endpoints follow), each line's fields, from one read."""
    return [dict(item.split("=", 1) for item in line.split() if "=" in item)
            for line in (PROC / "groups").read_text().splitlines()
            if line.startswith("group=")]


def group_line(group: int) -> dict[str, str]:
    return next((g for g in group_lines() if g["group"] == str(group)), {})


def drain(endpoints: Sequence[Endpoint], timeout: float = 0.5) -> list[list[bytes]]:
    return [[data for _, data in ep.frames(timeout=timeout)] for ep in endpoints]


def dmesg_lines() -> list[str]:
    """The kernel log's messages, from /dev/kmsg (one record per read)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    lines = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten while reading: go on
                continue
            lines.append(record.decode(errors="replace").split(";", 1)[-1].split("\n")[0])
    finally:
        os.close(fd)
    return lines


def raw_ioctl(ep: Endpoint, what: str, request: int, arg: bytes) -> None:
    """An ioctl as is, for requests omatic.pfq.endpoint refuses before the kernel sees them."""
    try:
        fcntl.ioctl(ep.fd, request, arg)
    except OSError as err:
        raise PfqError.of(what, err) from None


def group(stack: ExitStack, n: int, gid: int, steer: str = "copy", dev: str = DEV,
          slots: int = 1024, queue: int = -1, caplen: int = 0) -> list[Endpoint]:
    """`n` endpoints in group `gid`, steering `steer`, bound to `dev` (rx `queue`), rings
    of `slots` slots of `caplen` bytes (0: the module's)."""
    eps = []
    for _ in range(n):
        ep = stack.enter_context(Endpoint())
        ep.ring(slots=slots, caplen=caplen)
        ep.join(gid)
        eps.append(ep)
    eps[0].steer(steer)
    eps[0].bind(dev, queue)
    return eps


def shares_of(n: int, gid: int, steer: str, sent: Sequence[bytes]) -> list[list[bytes]]:
    """What each of `n` endpoints of a new group steering `steer` got of `sent`."""
    with ExitStack() as stack:
        eps = group(stack, n, gid, steer)
        inject(DEV, sent)
        return drain(eps)


def counters_add_up(gid: int, g: dict[str, str] | None = None) -> None:
    """Group `gid`'s counters add up: in `g`, its line already read, or read now."""
    g = group_line(gid) if g is None else g
    expect(bool(g), f"group {gid} missing from /proc/net/pfq/groups")
    received, parts = int(g["received"]), sum(int(g[k]) for k in ("filtered", "delivered",
                                                                   "dropped"))
    expect(received == parts, f"group {gid}: received {received} != filtered + delivered "
                              f"+ dropped {parts} ({g})")


# --- the checks ---------------------------------------------------------------------------

def check_hash(config: Config) -> None:
    sent, flow_of = flows(64, 4)
    with ExitStack() as stack:
        eps = group(stack, 4, 1, "hash")
        inject(DEV, sent)
        got = drain(eps)
        counters_add_up(1)
    union = sorted(frame for share in got for frame in share)
    expect(union == sorted(sent), f"union of the shares is {len(union)} frames, "
                                  f"{len(sent)} were sent (or bytes differ)")
    owner: dict[int, int] = {}
    for i, share in enumerate(got):
        for frame in share:
            f = flow_of[frame]
            expect(owner.setdefault(f, i) == i, f"flow {f} reached endpoints {owner[f]} and {i}")
    mean = len(sent) / len(eps)
    expect(max(len(s) for s in got) <= 2 * mean,
           f"shares {[len(s) for s in got]}: one is above twice the mean {mean}")


def check_rr(config: Config) -> None:
    sent = ex1(101)
    got = shares_of(4, 2, "rr", sent)
    sizes = [len(s) for s in got]
    expect(max(sizes) - min(sizes) <= 1, f"rr shares {sizes} differ by more than 1")
    expect(sorted(f for s in got for f in s) == sorted(sent), "rr: union is not what was sent")


def check_copy(config: Config) -> None:
    sent = ex1(40)
    got = shares_of(3, 3, "copy", sent)
    for i, share in enumerate(got):
        expect(share == sent, f"copy: endpoint {i} has {len(share)} of {len(sent)} frames")


def check_bpf(config: Config) -> None:
    program = [tuple(insn) for insn in config["udp_dst_9"]]
    match = [ipv4(1, 2, 17, 5000 + i, 9, 1000 + i) for i in range(10)]
    other = ([ipv4(1, 2, 17, 5000 + i, 10, 2000 + i) for i in range(10)]
             + [ipv4(1, 2, 6, 5000 + i, 9, 3000 + i) for i in range(10)] + ex1(5))
    sent = [f for pair in zip(match, other[:10], strict=True) for f in pair] + other[10:]
    with ExitStack() as stack:
        eps = group(stack, 2, 4, "rr")
        eps[0].set_filter(program)
        inject(DEV, sent)
        got = drain(eps)
        g = group_line(4)
        counters_add_up(4)
    expect(sorted(f for s in got for f in s) == sorted(match),
           f"BPF: {sum(map(len, got))} frames reached the endpoints, {len(match)} match")
    expect(int(g["filtered"]) == len(other), f"BPF: filtered {g['filtered']}, "
                                             f"expected {len(other)}")


def check_vlan(config: Config) -> None:
    v10 = [ipv4(1, 2, 17, 6000 + i, 9, 4000 + i, vlan=10) for i in range(8)]
    v20 = [ipv4(1, 2, 17, 6000 + i, 9, 4100 + i, vlan=20) for i in range(8)]
    untagged = [ipv4(1, 2, 17, 6000 + i, 9, 4200 + i) for i in range(8)]
    sent = v10 + v20 + untagged
    with ExitStack() as stack:
        eps = group(stack, 1, 5, "copy")
        eps[0].set_vlan([10], untagged=False)
        inject(DEV, sent)
        (got,) = drain(eps)
        expect(got == v10, f"VLAN 10: {len(got)} frames reached the endpoint, "
                           f"{len(v10)} are tagged 10")
        expect(int(group_line(5)["filtered"]) == 16, "VLAN 10: filtered is not 16")
        eps[0].set_vlan([10], untagged=True)
        inject(DEV, sent)
        (got,) = drain(eps)
        expect(got == v10 + untagged, "VLAN 10 + untagged: not the tagged-10 and untagged frames")


def check_queue(config: Config) -> None:
    """A group bound to one rx queue sees only its frames; `queue` steering sends the
    frames of queue q to endpoint q % n."""
    sent = ex1(40)
    queues = [i % 4 for i in range(len(sent))]
    with ExitStack() as stack:
        (only,) = group(stack, 1, 13, "copy", queue=2)
        spread = group(stack, 2, 14, "queue")
        inject(DEV, sent, queues)
        got_only, got_a, got_b = drain([only, *spread])
    expect(got_only == [f for f, q in zip(sent, queues, strict=True) if q == 2],
           f"bound to queue 2: {len(got_only)} frames")
    expect(got_a == [f for f, q in zip(sent, queues, strict=True) if q % 2 == 0] and
           got_b == [f for f, q in zip(sent, queues, strict=True) if q % 2 == 1],
           f"queue steering: {len(got_a)} and {len(got_b)} frames, not by queue")


def check_cpu_and_rnd(config: Config) -> None:
    """`cpu`: the frames fed from CPU c (NAPI poll runs where it was scheduled) reach
    endpoint c % n; `rnd`: every endpoint gets some, none twice."""
    cpus = sorted(os.sched_getaffinity(0))
    expect(len(cpus) >= 2, f"the guest has {len(cpus)} CPU(s); cpu steering needs 2")
    bursts = {cpu: ex1(50, start=1000 * cpu) for cpu in cpus[:2]}
    with ExitStack() as stack:
        eps = group(stack, 4, 15, "cpu")
        try:
            for cpu, burst in bursts.items():
                os.sched_setaffinity(0, {cpu})
                inject(DEV, burst)
        finally:
            os.sched_setaffinity(0, cpus)
        got = drain(eps)
    for cpu, burst in bursts.items():
        expect(got[cpu % 4] == burst, f"cpu: the frames fed from CPU {cpu} are not all at "
                                      f"endpoint {cpu % 4}: shares {[len(s) for s in got]}")
    sent = ex1(400)
    got = shares_of(4, 15, "rnd", sent)
    expect(sorted(f for s in got for f in s) == sorted(sent) and all(got),
           f"rnd: shares {[len(s) for s in got]}")


def check_read_and_caplen(config: Config) -> None:
    """read() instead of the mapping, and a caplen of 64: frames cut, wire length kept."""
    sent = [ipv4(1, 2, 17, 7000, 9, 5000 + i) + bytes(range(100)) for i in range(10)]
    with ExitStack() as stack:
        ep = stack.enter_context(Endpoint(nonblock=True))
        ep.ring(slots=64, caplen=64)
        ep.join(16)
        ep.bind(DEV)
        inject(DEV, sent)
        got = ep.read_records()
    expect([(f.data, f.wire_len) for f in got] == [(f[:64], len(f)) for f in sent],
           f"read(): {len(got)} records, not the 10 frames cut at 64 bytes")


def check_other_namespace(config: Config) -> None:
    """From another network namespace, this one's devices cannot be bound (they are
    invisible there), and that namespace's own devices are not PFQ's."""
    code = ("import sys; from omatic.pfq.endpoint import Endpoint, PfqError\n"
            "ep = Endpoint(); ep.join(17)\n"
            "for dev in sys.argv[1:]:\n"
            "    try:\n"
            "        ep.bind(dev); print(dev, 'bound')\n"
            "    except PfqError as err:\n"
            "        print(dev, 'EINVAL' if 'EINVAL' in str(err) else err)\n")
    run = subprocess.run(["unshare", "-n", sys.executable, "-S", "-c", code, DEV, "lo"],
                         capture_output=True, text=True, check=False)
    expect(run.returncode == 0 and run.stdout.split() == [DEV, "EINVAL", "lo", "EINVAL"],
           f"in another namespace: {run.stdout.strip()} {run.stderr.strip()[-200:]}")


def check_two_groups(config: Config) -> None:
    sent, _ = flows(16, 2)
    with ExitStack() as stack:
        a = group(stack, 2, 6, "hash", dev=DEV2)
        b = group(stack, 2, 7, "copy", dev=DEV2)
        inject(DEV2, sent)
        got_a, got_b = drain(a), drain(b)
    expect(sorted(f for s in got_a for f in s) == sorted(sent), "hash group incomplete")
    for i, share in enumerate(got_b):
        expect(share == sent, f"copy group: endpoint {i} has {len(share)} of {len(sent)}")


def _busy(what: str, call: Callable[[], None]) -> None:
    try:
        call()
    except PfqError as err:
        expect("EBUSY" in str(err), f"{what}: {err}, not EBUSY")
        return
    raise CheckFailed(f"{what} was accepted")


def check_shared_settings(config: Config) -> None:
    """A group of one's own (PFQ_GROUP_ANY), and PACKET_FANOUT's rule for shared
    settings: the first member to set one decides it, the same is accepted again, another
    is refused; an unshared setting still changes it; an emptied group starts afresh."""
    udp9 = [tuple(insn) for insn in config["udp_dst_9"]]
    keep_all = [(0x06, 0, 0, 0xFFFF)]
    with ExitStack() as stack:
        first, second, joiner = (stack.enter_context(Endpoint()) for _ in range(3))
        for ep in (first, second, joiner):
            ep.ring(slots=64)
        free = [g for g in range(64) if not group_line(g)]
        own, other = first.join(None), second.join(None)
        expect([own, other] == free[:2], f"groups of their own: {own} and {other}, the "
                                         f"lowest free ones are {free[:2]}")
        joiner.join(own)
        first.steer("hash", shared=True)
        joiner.steer("sym", shared=True)  # the same mode by another name
        _busy("another shared fan-out", lambda: joiner.steer("rr", shared=True))
        expect(group_line(own)["steer"] == "hash", "a refused fan-out changed the group")
        joiner.steer("rr")  # unshared: any member may change it, and so decides it anew
        _busy("the old shared fan-out", lambda: first.steer("hash", shared=True))
        first.set_filter(udp9, shared=True)
        joiner.set_filter(udp9, shared=True)
        _busy("another shared filter", lambda: joiner.set_filter(keep_all, shared=True))
        _busy("no filter, shared", lambda: joiner.set_filter(None, shared=True))
        first.close()
        joiner.close()
    with ExitStack() as stack:
        again = stack.enter_context(Endpoint())
        again.ring(slots=64)
        again.join(own)
        again.steer("rr", shared=True)
        again.set_filter(keep_all, shared=True)
        expect(group_line(own)["steer"] == "rr", "an emptied group kept its shared fan-out")


def check_tap_and_capture(config: Config) -> None:
    sent = ex1(30)
    with ExitStack() as stack:
        eps = group(stack, 1, 8, "copy")
        set_mode(DEV, "tap")
        tap = inject(DEV, sent)
        (got_tap,) = drain(eps)
        set_mode(DEV, "capture")
        capture = inject(DEV, sent)
        (got_capture,) = drain(eps)
        set_mode(DEV, "tap")
    expect(tap["stack"] == len(sent), f"tap: {tap['stack']} frames reached the stack of "
                                      f"{len(sent)}")
    expect(capture["stack"] == 0, f"capture: {capture['stack']} frames reached the stack")
    expect(got_tap == sent and got_capture == sent, "tap/capture: the endpoint missed frames")


def check_close_mid_burst(config: Config) -> None:
    first, second = ex1(60), ex1(60, start=1000)
    with ExitStack() as stack:
        eps = group(stack, 3, 9, "rr")
        inject(DEV, first)
        gone = eps.pop()
        gone_share = [d for _, d in gone.frames(timeout=0.2)]
        gone.close()
        inject(DEV, second)
        got = drain(eps)
        counters_add_up(9)
        g = group_line(9)
    union = sorted([*gone_share, *(f for s in got for f in s)])
    expect(union == sorted(first + second), "close mid-burst: frames lost or duplicated")
    expect(int(g["endpoints"]) == 2, f"close mid-burst: the group has {g['endpoints']} endpoints")
    expect(len(gone_share) == 20, f"close mid-burst: the closed endpoint had {len(gone_share)}")


def check_killed_process(config: Config) -> None:
    """A process killed with its endpoint open leaves the group at once: the others get
    every frame after it."""
    sent = ex1(30)
    with ExitStack() as stack:
        eps = group(stack, 1, 18, "rr")
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                ep = Endpoint()
                ep.join(18)
                os.write(ready_w, b"1")
                time.sleep(600)
            finally:
                os._exit(1)
        os.read(ready_r, 1)
        os.close(ready_r)
        os.close(ready_w)
        expect(group_line(18).get("endpoints") == "2", "the child did not join")
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        expect(group_line(18).get("endpoints") == "1",
               f"after SIGKILL the group has {group_line(18).get('endpoints')} endpoints")
        inject(DEV, sent)
        (got,) = drain(eps)
        counters_add_up(18)
    expect(got == sent, f"after SIGKILL the remaining endpoint got {len(got)} of {len(sent)}")


def check_ring_full(config: Config) -> None:
    sent = ex1(20)
    with ExitStack() as stack:
        (ep,) = group(stack, 1, 10, "copy", slots=8)
        inject(DEV, sent)
        stats = ep.stats()
        got = [d for _, d in ep.frames(timeout=0.2)]
        counters_add_up(10)
    expect(got == sent[:8], f"ring full: the endpoint has {len(got)} frames, not the first 8")
    expect((stats.received, stats.delivered, stats.dropped) == (20, 8, 12),
           f"ring full: endpoint counters {stats}")


def check_wake_after(config: Config) -> None:
    """A reader asking for a batch (the ring head's wake_after) sleeps until that many
    frames wait: the producer of the last one wakes it; a batch larger than the ring is
    the ring; 0 is the first frame again."""
    sent = ex1(13)
    with ExitStack() as stack:
        (ep,) = group(stack, 1, 11, "copy", slots=8)
        poller = select.poll()
        poller.register(ep.fd, select.POLLIN)
        pool = stack.enter_context(ThreadPoolExecutor(1))
        got: list[bytes] = []
        for batch, frames in ((4, sent[:4]), (100, sent[4:12]), (0, sent[12:])):
            ep.wake_after(batch)
            asleep = pool.submit(poller.poll, 10_000)
            if frames[:-1]:
                inject(DEV, frames[:-1])
            time.sleep(0.2)
            expect(not asleep.done(), f"wake_after {batch}: woken by {len(frames) - 1} "
                                      f"frames of {len(frames)}")
            inject(DEV, frames[-1:])
            start = time.monotonic()
            expect(bool(asleep.result(timeout=10)) and time.monotonic() - start < 5,
                   f"wake_after {batch}: not woken by frame {len(frames)}")
            got += [d for _, d in ep.frames(timeout=0.1)]
    expect(got == sent, f"wake_after: {len(got)} of {len(sent)} frames read back in order")


def _feed_from(cpu: int, dev: str, bursts: Sequence[Sequence[bytes]],
               start: threading.Barrier, errors: list[BaseException]) -> None:
    """Inject `bursts` into `dev` from a thread pinned to `cpu`: its NAPI poll runs there."""
    try:
        os.sched_setaffinity(0, {cpu})
        start.wait()
        for burst in bursts:
            inject(dev, burst)
    except BaseException as err:  # reported by the check, in the main thread
        errors.append(err)


def two_cpus_into_one_ring(slots: int, rounds: int, burst: int
                           ) -> tuple[dict[str, list[bytes]], list[bytes], Any]:
    """Both CPUs feed one endpoint at once: DEV's frames from CPU 0 and DEV2's from CPU 1,
    both devices bound to its group, while the ring is read. What was sent by device,
    what was read (in order), and the endpoint's counters."""
    cpus = sorted(os.sched_getaffinity(0))
    expect(len(cpus) >= 2, f"the guest has {len(cpus)} CPU(s); this check needs 2")
    sent = {dev: ex1(rounds * burst, start=base)
            for dev, base in ((DEV, 200_000), (DEV2, 300_000))}
    start, errors = threading.Barrier(3), list[BaseException]()
    threads = [threading.Thread(target=_feed_from, args=(
        cpu, dev, [frames[i:i + burst] for i in range(0, len(frames), burst)], start,
        errors)) for cpu, (dev, frames) in zip(cpus[:2], sent.items(), strict=True)]
    got: list[bytes] = []
    with ExitStack() as stack:
        (ep,) = group(stack, 1, 41, "copy", slots=slots)
        ep.bind(DEV2)
        for thread in threads:
            thread.start()
        start.wait()
        while any(thread.is_alive() for thread in threads):
            got.extend(data for _, data in ep.frames(timeout=0.02))
        for thread in threads:
            thread.join()
        got.extend(data for _, data in ep.frames(timeout=0.3))
        stats = ep.stats()
        counters_add_up(41)
    if errors:
        raise CheckFailed(f"a feeding thread failed: {errors[0]!r}")
    return sent, got, stats


def in_order_once(sent: dict[str, list[bytes]], got: Sequence[bytes]) -> str:
    """Why `got` is not each device's frames once and in the order fed ('' when it is)."""
    if len(set(got)) != len(got):
        return f"{len(got) - len(set(got))} frames read twice"
    index = {frame: (dev, i) for dev, frames in sent.items() for i, frame in enumerate(frames)}
    last = dict.fromkeys(sent, -1)
    for frame in got:
        if frame not in index:
            return "a frame that was never sent"
        dev, i = index[frame]
        if i < last[dev]:
            return f"{dev}'s frame {i} read after its frame {last[dev]}"
        last[dev] = i
    return ""


def check_two_cpus_one_ring(config: Config) -> None:
    """The lock-free ring under both CPUs at once. With room for all: every frame once,
    each device's in the order fed. With 256 slots, read while both fill it: nothing
    twice, nothing out of order, and received = sent = delivered (what was read) +
    dropped (the full ring)."""
    rounds, burst = 8, 256
    total = 2 * rounds * burst
    sent, got, stats = two_cpus_into_one_ring(total, rounds, burst)
    why = in_order_once(sent, got)
    expect(not why and len(got) == total,
           f"room for all: {len(got)} of {total} frames read; {why or 'none twice'}")
    expect((stats.received, stats.delivered, stats.dropped) == (total, total, 0),
           f"room for all: endpoint counters {stats}")
    sent, got, stats = two_cpus_into_one_ring(256, rounds, burst)
    why = in_order_once(sent, got)
    expect(not why, f"256 slots: {why}")
    expect((stats.received, stats.delivered, stats.dropped) ==
           (total, len(got), total - len(got)),
           f"256 slots: {len(got)} frames read of {total}, endpoint counters {stats}")


def check_unprivileged(config: Config) -> None:
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                Endpoint().close()
                code = 1
            except PfqError as err:
                code = 0 if "EPERM" in str(err) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    expect(os.WEXITSTATUS(status) == 0,
           {1: "an unprivileged process opened /dev/pfq", 2: "not EPERM"}.get(
               os.WEXITSTATUS(status), f"the child failed ({status})"))


def check_bad_requests(config: Config) -> None:
    bad_program = [(0x06, 0, 0, 0), (0x15, 5, 0, 0)]  # ret first, then a jump off the end
    before = (PROC / "groups").read_text()
    with ExitStack() as stack:
        (ep,) = group(stack, 1, 11, "copy")
        spare = stack.enter_context(Endpoint())
        steady = (PROC / "groups").read_text()
        tries: list[tuple[str, Callable[[], None]]] = [
            ("malformed BPF", lambda: ep.set_filter([(0xFFFF, 0, 0, 0)])),
            ("BPF jumping out", lambda: ep.set_filter(bad_program)),
            ("unknown device", lambda: ep.bind("nosuchdev0")),
            ("unknown mode", lambda: raw_ioctl(ep, "steer 99", PFQ_IOC_STEER,
                                                 struct.pack("<I", 99))),
            ("group 64", lambda: raw_ioctl(spare, "join 64", PFQ_IOC_JOIN,
                                           struct.pack("<I", 64))),
            ("unknown filter flags", lambda: raw_ioctl(ep, "filter flags 2", PFQ_IOC_FILTER,
                                                       FILTER.struct.pack(0, 2, 0))),
        ]
        for name, call in tries:
            n0 = len(_pfq_lines())
            try:
                call()
                raise CheckFailed(f"{name} was accepted")
            except PfqError as err:
                expect("EINVAL" in str(err), f"{name}: {err}, not EINVAL")
            n1 = len(_pfq_lines())
            expect(n1 - n0 == 1, f"{name}: {n1 - n0} dmesg lines, expected 1")
            expect((PROC / "groups").read_text() == steady, f"{name} changed the groups")
    expect((PROC / "groups").read_text() == before, "the groups did not go back")


def _capture_ready(gid: int, workers: int) -> bool:
    g = group_line(gid)
    return g.get("endpoints") == str(workers) and DEV in g.get("devices", "").split(",")


def _capture_drained(gid: int) -> bool:
    """Every endpoint of the group has an empty ring: the workers took all."""
    lines = (PROC / "groups").read_text().splitlines()
    queued = [int(m[1]) for line in lines if f" group={gid} " in line
              for m in [re.search(r" queued=(\d+)", line)] if m]
    return bool(queued) and not any(queued)


def check_capture_cli(config: Config) -> None:
    """`pfq-omatic capture DEV --workers 4 --steer hash -w /tmp/w.pcap` (with rings of
    1024 slots: pfq.ko has 64 here), Ctrl-C once the workers took every frame: 4 files
    tcpdump reads, whose union is what was sent."""
    sent, flow_of = flows(32, 4)
    for old in Path("/tmp").glob("w.*.pcap"):
        old.unlink()
    argv = [sys.executable, "-S", "-m", "omatic", "capture", DEV, "--workers", "4",
            "--steer", "hash", "-w", "/tmp/w.pcap", "--duration", "300", "--slots", "1024"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _capture_ready(0, 4):
            expect(proc.poll() is None and time.monotonic() < deadline,
                   f"capture did not set up its group: {_output(proc)}")
            time.sleep(0.1)
        inject(DEV, sent)
        while not _capture_drained(0):
            expect(time.monotonic() < deadline, "the workers did not take every frame")
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        said = proc.communicate(timeout=60)[0]
        expect(proc.returncode == 0, f"capture exited {proc.returncode}: {said[-300:]}")
        expect("warning" not in said, f"capture warned: {said[-300:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = [Path(f"/tmp/w.{i}.pcap") for i in range(4)]
    shares = [read_pcap(f.read_bytes()) for f in files]
    expect(sorted(f for s in shares for f in s) == sorted(sent),
           f"the files hold {sum(map(len, shares))} frames, {len(sent)} were sent")
    owner: dict[int, int] = {}
    for i, share in enumerate(shares):
        for frame in share:
            expect(owner.setdefault(flow_of[frame], i) == i, "a flow is in two files")
    for f, share in zip(files, shares, strict=True):
        run = subprocess.run([TCPDUMP, "-nr", str(f)], capture_output=True, text=True,
                             check=False)
        lines = len(run.stdout.splitlines())
        expect(run.returncode == 0 and lines == len(share),
               f"tcpdump -r {f}: exit {run.returncode}, {lines} frames of {len(share)}: "
               f"{run.stderr.strip()[-200:]}")


def _output(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "still running"
    return (proc.stdout.read() if proc.stdout else "")[-300:]


def _pfq_lines() -> list[str]:
    return [line for line in dmesg_lines() if line.startswith("pfq:")]


CHECKS: list[tuple[str, Callable[[Config], None]]] = [
    ("hash_4_endpoints", check_hash),
    ("rr_shares", check_rr),
    ("copy_everything", check_copy),
    ("bpf_udp_dst_port_9", check_bpf),
    ("vlan_10", check_vlan),
    ("queue_bind_and_steer", check_queue),
    ("cpu_and_rnd", check_cpu_and_rnd),
    ("read_and_caplen", check_read_and_caplen),
    ("other_namespace", check_other_namespace),
    ("two_groups_one_device", check_two_groups),
    ("shared_settings_first_member_decides", check_shared_settings),
    ("tap_feeds_stack_capture_does_not", check_tap_and_capture),
    ("endpoint_closed_mid_burst", check_close_mid_burst),
    ("killed_process_leaves", check_killed_process),
    ("endpoint_ring_full", check_ring_full),
    ("wake_after_a_batch", check_wake_after),
    ("two_cpus_one_ring", check_two_cpus_one_ring),
    ("unprivileged_eperm", check_unprivileged),
    ("bad_requests_einval", check_bad_requests),
    ("capture_cli_4_workers_hash", check_capture_cli),
]



def main(argv: Iterable[str]) -> int:
    (config_path,) = list(argv)
    config = json.loads(Path(config_path).read_text())
    print("\n".join(run_checks(CHECKS, config)), flush=True)
    return 0


def run_checks(checks: Sequence[tuple[str, Callable[[Config], None]]],
               config: Config) -> list[str]:
    """Run `checks` with the hook test module's devices in tap mode, then a last one:
    pfq.ko's reference count is back where it was. The KTAP document, as lines; each
    result goes to stderr as it comes."""
    refcnt = Path("/sys/module/pfq/refcnt").read_text().strip()
    for dev in (DEV, DEV2):
        set_mode(dev, "tap")
    lines = ["KTAP version 1", f"1..{len(checks) + 1}"]
    for n, (name, check) in enumerate(checks, 1):
        try:
            check(config)
            lines.append(f"ok {n} {name}")
        except (CheckFailed, PfqError, OSError, subprocess.SubprocessError) as err:
            lines.append(f"not ok {n} {name} # {str(err).replace(chr(10), ' ')[:300]}")
        print(lines[-1], file=sys.stderr, flush=True)
    for dev in (DEV, DEV2):
        set_mode(dev, "pass")
    after = Path("/sys/module/pfq/refcnt").read_text().strip()
    n = len(checks) + 1
    lines.append(f"ok {n} refcount_back" if after == refcnt else
                 f"not ok {n} refcount_back # pfq's refcount was {refcnt}, is {after}")
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
