"""Unmodified tcpdump capturing through PFQ, proven in a guest: run there as
`python3 -S -m omatic.lab.pcapcheck LIBDIR`.

The hook lab's guest (omatic.lab.hooks) has pfq.ko and the hook test module loaded, and
this machine's tcpdump with the libpcap `pfq-omatic pcap` built (Debian's, with PFQ's
capture source) in LIBDIR. Each check starts Debian's tcpdump as a user would, with
LD_LIBRARY_PATH=LIBDIR and the PCAP_* variables of the TMA 2017 paper, feeds frames
through the module's devices (omatic.lab.groupcheck's machinery), and compares the pcap
files tcpdump wrote with what was sent; the results are one KTAP document on stdout.

Standard library and omatic.pfq only: the guest's python3 has nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pty
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from omatic.lab.groupcheck import (
    DEV,
    DEV2,
    PROC,
    TCPDUMP,
    CheckFailed,
    Config,
    expect,
    flows,
    group_line,
    inject,
    ipv4,
    run_checks,
    set_mode,
)
from omatic.lab.safetycheck import SETPRIV

#: Wireshark's capture program (Debian's wireshark-common).
DUMPCAP = "/usr/bin/dumpcap"
#: Wireshark's tshark: it captures by running the dumpcap of its own folder.
TSHARK = "/usr/bin/tshark"
#: Debian's NetFlow exporter and its control program.
SOFTFLOWD, SOFTFLOWCTL = "/usr/sbin/softflowd", "/usr/sbin/softflowctl"
#: Where the guest has the libpcap of `pfq-omatic pcap` (set by main()).
LIBDIR = "/opt/pfq-libpcap/lib"
#: Seconds a tcpdump has to start, or to finish once told.
WAIT = 15.0
OUT = Path("/tmp/pcapcheck")


# --- tcpdump ------------------------------------------------------------------------------

def tcpdump(args: Sequence[str], env: Mapping[str, str] | None = None,
            setpriv: Sequence[str] = ()) -> subprocess.Popen[str]:
    """Debian's tcpdump on the PFQ libpcap (as root: -Z root keeps it so, for /tmp)."""
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": LIBDIR, **(env or {})}
    return subprocess.Popen([*setpriv, TCPDUMP, "-Z", "root", *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], interrupt: bool = True) -> tuple[int, str]:
    """End `proc` (SIGINT, as Ctrl-C, unless it ends by itself); its status and stderr."""
    if interrupt and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise CheckFailed(f"{program(proc)} did not end: {(err or out or '').strip()[-200:]}"
                          ) from None
    # Its errors, or all it said when they went to stdout too.
    return proc.returncode, err if err is not None else out


def program(proc: subprocess.Popen[str]) -> str:
    """The name of the program `proc` runs."""
    args = proc.args
    return Path(str(args[0] if isinstance(args, list | tuple) else args)).name


def groups_on(dev: str) -> dict[int, dict[str, str]]:
    """The groups bound to `dev`, by id."""
    found = {}
    for line in (PROC / "groups").read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "group" in fields and dev in fields.get("devices", "").split(","):
            found[int(fields["group"])] = fields
    return found


def wait_for(ready: Callable[[], bool], what: str, procs: Sequence[subprocess.Popen[str]]
             ) -> None:
    deadline = time.monotonic() + WAIT
    while not ready():
        for proc in procs:
            if proc.poll() is not None:
                _code, err = finish(proc, interrupt=False)
                raise CheckFailed(f"{program(proc)} ended before {what}: {err.strip()[-300:]}")
        expect(time.monotonic() < deadline, f"no {what} after {WAIT} s")
        time.sleep(0.05)


def members(gid: int, n: int, procs: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until group `gid` has `n` endpoints bound to DEV."""
    wait_for(lambda: groups_on(DEV).get(gid, {}).get("endpoints") == str(n),
             f"{n} endpoint(s) in group {gid}", procs)


def drained(procs: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until every ring is empty: the readers took all they were given."""
    wait_for(lambda: not re.search(r"queued=[1-9]", (PROC / "groups").read_text()),
             "empty rings", procs)


def records(path: Path) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """A pcap file's magic and its records (seconds, fraction, frame)."""
    data = path.read_bytes()
    expect(len(data) >= 24, f"{path}: {len(data)} bytes, no pcap header")
    out, at = [], 24
    while at + 16 <= len(data):
        sec, frac, caplen, _wire = struct.unpack("<IIII", data[at:at + 16])
        out.append((sec, frac, data[at + 16:at + 16 + caplen]))
        at += 16 + caplen
    return data[:4], out


def fresh(name: str) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    path.unlink(missing_ok=True)
    return path


def no_group_left() -> None:
    expect(not groups_on(DEV), f"groups left bound to {DEV}: {sorted(groups_on(DEV))}")


# --- the checks ---------------------------------------------------------------------------

def check_version(config: Config) -> None:
    run = subprocess.run([TCPDUMP, "--version"], env={"LD_LIBRARY_PATH": LIBDIR},
                         capture_output=True, text=True, check=False)
    expect("+pfq" in run.stdout, f"tcpdump --version: {run.stdout.strip()!r}")


def check_exact_nanoseconds(config: Config) -> None:
    """tcpdump -i pfq:DEV -c N -w FILE --time-stamp-precision=nano: exactly the frames
    sent, with nanosecond stamps of when they came."""
    sent, _ = flows(16, 4)
    path = fresh("exact.pcap")
    set_mode(DEV, "tap")
    proc = tcpdump(["-i", f"pfq:{DEV}", "-c", str(len(sent)), "-w", str(path),
                    "--time-stamp-precision=nano"])
    wait_for(lambda: bool(groups_on(DEV)), "a group on " + DEV, [proc])
    before = time.time_ns()
    inject(DEV, sent)
    after = time.time_ns()
    code, err = finish(proc, interrupt=False)
    expect(code == 0, f"tcpdump exit {code}: {err.strip()[-300:]}")
    magic, got = records(path)
    expect(magic == b"\x4d\x3c\xb2\xa1", f"magic {magic.hex()}: not nanosecond pcap")
    expect([frame for _s, _f, frame in got] == sent,
           f"{len(got)} frames in the file, {len(sent)} sent (or bytes differ)")
    stamps = [sec * 10**9 + frac for sec, frac, _frame in got]
    expect(all(before <= s <= after for s in stamps) and stamps == sorted(stamps),
           f"stamps {stamps[0]}..{stamps[-1]} not within {before}..{after}, or not in order")
    no_group_left()


def queued_here() -> int:
    """Frames waiting in the ring of this process's endpoint (-1: it has none)."""
    for line in (PROC / "groups").read_text().splitlines():
        match = re.search(r" queued=(\d+)", line)
        if line.startswith("endpoint=") and f" pid={os.getpid()} " in line and match:
            return int(match[1])
    return -1


class PcapPkthdr(ctypes.Structure):
    """struct pcap_pkthdr on Linux."""
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long), ("caplen", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


def check_next_ex_copies(config: Config) -> None:
    """pcap_next_ex() on pfq:DEV, called through ctypes as a C program would: the frame
    it returns stays whole until the next call, even once the ring's slot it came from
    holds another frame (the frame is copied, its slot given back)."""
    lib = ctypes.CDLL(f"{LIBDIR}/libpcap.so.0.8")
    lib.pcap_open_live.restype = ctypes.c_void_p
    lib.pcap_open_live.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_char_p]
    lib.pcap_next_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    errbuf = ctypes.create_string_buffer(256)
    set_mode(DEV, "tap")
    os.environ["PFQ_RX_SLOTS"] = "64"  # the least: frame 64 lands in frame 0's slot
    try:
        handle = lib.pcap_open_live(f"pfq:{DEV}".encode(), 256, 0, 100, errbuf)
    finally:
        del os.environ["PFQ_RX_SLOTS"]
    expect(handle, f"pcap_open_live: {errbuf.value.decode(errors='replace')}")
    try:
        sent = [ipv4(1, 2, 17, 9300 + i, 9, 8000 + i) for i in range(65)]
        header = ctypes.POINTER(PcapPkthdr)()
        data = ctypes.POINTER(ctypes.c_ubyte)()

        def next_ex(what: str) -> bytes:
            ret = lib.pcap_next_ex(handle, ctypes.byref(header), ctypes.byref(data))
            expect(ret == 1, f"pcap_next_ex for {what}: {ret}")
            return ctypes.string_at(data, header.contents.caplen)

        inject(DEV, sent[:1])
        first = next_ex("frame 0")
        inject(DEV, sent[1:])
        deadline = time.monotonic() + WAIT
        while queued_here() != 64:
            expect(time.monotonic() < deadline, f"the ring holds {queued_here()} frames, "
                                                f"not frames 1 to 64")
            time.sleep(0.05)
        expect(first == sent[0] and ctypes.string_at(data, header.contents.caplen) == sent[0],
               "frame 0 changed under pcap_next_ex's pointer")
        got = [next_ex(f"frame {i}") for i in range(1, 65)]
        expect(got == sent[1:], f"{sum(a == b for a, b in zip(got, sent[1:], strict=True))} "
                                f"of 64 frames as sent")
    finally:
        lib.pcap_close(handle)
        set_mode(DEV, "pass")
    no_group_left()


def check_plain_device_is_af_packet(config: Config) -> None:
    """The same library on DEV (no pfq:) captures as libpcap does, through AF_PACKET."""
    sent = [ipv4(1, 2, 17, 7000 + i, 9, 9000 + i) for i in range(8)]
    path = fresh("plain.pcap")
    set_mode(DEV, "pass")
    proc = tcpdump(["-i", DEV, "-c", str(len(sent)), "-w", str(path)])
    time.sleep(1.0)  # no PFQ group to wait for: the packet socket is up well before
    inject(DEV, sent)
    code, err = finish(proc, interrupt=False)
    expect(code == 0, f"tcpdump exit {code}: {err.strip()[-300:]}")
    expect([f for _s, _x, f in records(path)[1]] == sent, "AF_PACKET capture differs")
    expect(not groups_on(DEV), "tcpdump -i DEV made a PFQ group")


def _fan_out(n: int, gid: int, fanout: str, sent: Sequence[bytes], extra: Sequence[str] = ()
             ) -> list[list[bytes]]:
    """`n` tcpdumps started alike (PCAP_GROUP, PCAP_FANOUT) on pfq:DEV; what each wrote of
    `sent`, once the group delivered all it would."""
    set_mode(DEV, "tap")
    paths = [fresh(f"fan{gid}.{i}.pcap") for i in range(n)]
    env = {"PCAP_GROUP": str(gid), "PCAP_FANOUT": fanout}
    procs = [tcpdump(["-i", f"pfq:{DEV}", "-w", str(p), *extra], env) for p in paths]
    try:
        members(gid, n, procs)
        inject(DEV, sent)
        drained(procs)
        g = group_line(gid)
    finally:
        results = [finish(p) for p in procs]
    for code, err in results:
        expect(code == 0, f"tcpdump exit {code}: {err.strip()[-300:]}")
    expect(int(g["received"]) == len(sent), f"group {gid} received {g['received']} of "
                                            f"{len(sent)}")
    no_group_left()
    return [[f for _s, _x, f in records(p)[1]] for p in paths]


def check_fanout_hash(config: Config) -> None:
    """4 tcpdumps, PCAP_GROUP=5 PCAP_FANOUT=hash: disjoint files whose union is what was
    sent, each flow (both directions) whole in one."""
    sent, flow_of = flows(32, 4)
    shares = _fan_out(4, 5, "hash", sent)
    expect(sorted(f for s in shares for f in s) == sorted(sent),
           f"files of {[len(s) for s in shares]} frames, {len(sent)} sent")
    owner: dict[int, int] = {}
    for i, share in enumerate(shares):
        for frame in share:
            expect(owner.setdefault(flow_of[frame], i) == i,
                   f"flow {flow_of[frame]} is in files {owner[flow_of[frame]]} and {i}")
    expect(sum(1 for s in shares if s) > 1, "one file has every frame")


def check_fanout_copy(config: Config) -> None:
    sent, _ = flows(8, 2)
    for i, share in enumerate(_fan_out(3, 6, "copy", sent)):
        expect(share == sent, f"copy: file {i} has {len(share)} of {len(sent)} frames")


def check_filter_in_kernel(config: Config) -> None:
    """A filter expression on tcpdump's command line becomes the group's BPF program."""
    match = [ipv4(1, 2, 17, 5000 + i, 9, 1000 + i) for i in range(10)]
    other = [ipv4(1, 2, 17, 5000 + i, 10, 2000 + i) for i in range(10)]
    sent = [f for pair in zip(match, other, strict=True) for f in pair]
    set_mode(DEV, "tap")
    path = fresh("filter.pcap")
    proc = tcpdump(["-i", f"pfq:{DEV}", "-w", str(path), "udp and dst port 9"],
                   {"PCAP_GROUP": "7"})
    members(7, 1, [proc])
    wait_for(lambda: group_line(7).get("bpf", "0") != "0", "the group's BPF program", [proc])
    inject(DEV, sent)
    drained([proc])
    g = group_line(7)
    code, err = finish(proc)
    expect(code == 0, f"tcpdump exit {code}: {err.strip()[-300:]}")
    got = [f for _s, _x, f in records(path)[1]]
    expect(got == match, f"the file has {len(got)} frames ({sum(f in match for f in got)} "
                         f"matches, {sum(f in other for f in got)} others), {len(match)} "
                         f"match; group {g}")
    expect(int(g["filtered"]) == len(other), f"the kernel filtered {g['filtered']}, "
                                             f"{len(other)} do not match")


def check_conflicting_fanout(config: Config) -> None:
    """A second instance asking group 8 for another fan-out is refused, the first runs on."""
    set_mode(DEV, "tap")
    first = tcpdump(["-i", f"pfq:{DEV}", "-w", str(fresh("c1.pcap"))],
                    {"PCAP_GROUP": "8", "PCAP_FANOUT": "hash"})
    try:
        members(8, 1, [first])
        second = tcpdump(["-i", f"pfq:{DEV}", "-w", str(fresh("c2.pcap"))],
                         {"PCAP_GROUP": "8", "PCAP_FANOUT": "rr"})
        code, err = finish(second, interrupt=False)
        expect(code == 1 and "group 8 fans out otherwise" in err,
               f"the second tcpdump: exit {code}, {err.strip()[-300:]!r}")
        expect(group_line(8).get("endpoints") == "1", "the refused one stayed in group 8")
        expect(first.poll() is None, "the first tcpdump ended")
    finally:
        code, err = finish(first)
    expect(code == 0, f"the first tcpdump: exit {code}: {err.strip()[-300:]}")
    no_group_left()


def check_bad_input(config: Config) -> None:
    """One clear libpcap error each, exit 1 as for an unknown interface, nothing bound."""
    cases: list[tuple[str, list[str], dict[str, str], Sequence[str], str]] = [
        ("unknown device", ["-i", "pfq:nosuch0"], {}, (),
         "pfq:nosuch0: no network device nosuch0"),
        ("group out of range", ["-i", f"pfq:{DEV}"], {"PCAP_GROUP": "64"}, (),
         "PCAP_GROUP: group '64': expected 0..63"),
        ("unknown fan-out", ["-i", f"pfq:{DEV}"], {"PCAP_FANOUT": "rollover"}, (),
         "PCAP_FANOUT: unknown steering mode 'rollover'"),
        ("pass mode", ["-i", f"pfq:{DEV}"], {}, (), f"{DEV} is in PFQ's pass mode"),
        ("no CAP_NET_RAW", ["-i", f"pfq:{DEV}"], {},
         (SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all"), "needs CAP_NET_RAW"),
    ]
    for name, args, env, setpriv, message in cases:
        set_mode(DEV, "pass" if name == "pass mode" else "tap")
        code, err = finish(tcpdump([*args, "-w", "/dev/null"], env, setpriv),
                           interrupt=False)
        last = (err.strip().splitlines() or [""])[-1]
        expect(code == 1 and message in last, f"{name}: exit {code}, {last!r}")
        no_group_left()
    set_mode(DEV, "tap")


def check_stats_on_overflow(config: Config) -> None:
    """A tcpdump stopped while 200 frames come, on a ring of 64 slots: what it says at exit
    (received by filter, dropped by kernel) is what PFQ counted."""
    sent = [ipv4(1, 2, 17, 8000 + i, 9, 3000 + i) for i in range(200)]
    set_mode(DEV, "tap")
    path = fresh("overflow.pcap")
    proc = tcpdump(["-i", f"pfq:{DEV}", "-w", str(path)],
                   {"PCAP_GROUP": "9", "PFQ_RX_SLOTS": "64"})
    try:
        members(9, 1, [proc])
        proc.send_signal(signal.SIGSTOP)
        inject(DEV, sent)
        g = group_line(9)
    finally:
        proc.send_signal(signal.SIGCONT)
    drained([proc])
    code, err = finish(proc)
    expect(code == 0, f"tcpdump exit {code}: {err.strip()[-300:]}")
    said = {k: int(v) for v, k in re.findall(r"(\d+) packets? (captured|received by filter|"
                                             r"dropped by kernel)", err)}
    captured = len(records(path)[1])
    expect(said.get("captured") == captured == int(g["delivered"]),
           f"captured: tcpdump says {said.get('captured')}, file {captured}, PFQ delivered "
           f"{g['delivered']}")
    expect(said.get("received by filter") == len(sent),
           f"received by filter {said.get('received by filter')}, {len(sent)} sent")
    expect(said.get("dropped by kernel") == int(g["dropped"]) == len(sent) - captured,
           f"dropped by kernel: tcpdump says {said.get('dropped by kernel')}, PFQ "
           f"{g['dropped']}, {len(sent) - captured} not captured")


def testprog(name: str) -> str:
    """A test program of libpcap's source, built with the library (PREFIX/testprogs)."""
    return str(Path(LIBDIR).parent / "testprogs" / name)


def run_testprog(argv: Sequence[str]) -> tuple[int, str]:
    """A test program that ends by itself: its status and output."""
    run = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=False)
    return run.returncode, run.stdout + run.stderr


def on_terminal(argv: Sequence[str]) -> tuple[subprocess.Popen[str], Callable[[], str]]:
    """`argv` with its output on a pseudo-terminal, line-buffered as on a user's screen
    (SIGINT kills some test programs, which would lose what a pipe buffered); and what
    gives the output once it has ended."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer went
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def output() -> str:
        reader.join(WAIT)
        return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")

    return proc, output


def seen_by(argv: Sequence[str], device: str, sent: Sequence[bytes]) -> tuple[int, str]:
    """A capturing test program on `device` (pfq:DEV or DEV), fed `sent`, then SIGINT:
    the frames it says it saw, and its output."""
    before = set(groups_on(DEV))
    proc, output = on_terminal([*argv, "-i", device])
    try:
        if device.startswith("pfq:"):
            wait_for(lambda: set(groups_on(DEV)) != before, "a group on " + DEV, [proc])
        else:
            time.sleep(1.0)  # a packet socket: nothing to wait for
        inject(DEV, sent)
        if device.startswith("pfq:"):
            drained([proc])
        # A TPACKET_V3 block goes to user space when full or after the test's timeout.
        time.sleep(0.5 if device.startswith("pfq:") else 2.5)
    finally:
        finish(proc)
    out = output()
    # "N packets seen, ...", after "Select timed out: " or the like on some lines.
    return sum(int(n) for n in re.findall(r"\b(\d+) packets seen", out)), out


def where_stuck(pid: int) -> str:
    """Where each thread of `pid` waits: its state, the kernel function it sleeps in,
    and the top of its kernel stack (what a test program that does not end says)."""
    said = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            stack = [line.split()[-1] for line in (task / "stack").read_text().splitlines()]
            said.append(f"{task.name} {state} in {(task / 'wchan').read_text() or '-'}: "
                        f"{' < '.join(stack[:6])}")
        except OSError as err:
            said.append(f"{task.name}: {err.strerror}")
    return "; ".join(said) or "none left"


def check_testprogs(config: Config) -> None:
    """libpcap's own test programs, built from the same source: on pfq:DEV as on DEV.
    threadsignaltest breaks a blocked capture from another thread after 60 s: it runs
    on DEV2 meanwhile."""
    set_mode(DEV, "tap")
    set_mode(DEV2, "tap")
    signalled, signalled_output = on_terminal([testprog("threadsignaltest"), "-i",
                                               f"pfq:{DEV2}"])
    stuck = ""
    try:
        _testprogs_on_dev()
        code: int | None = signalled.wait(timeout=90)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if signalled.poll() is None:
            stuck = where_stuck(signalled.pid)
            signalled.kill()
            signalled.wait()
    out = signalled_output()
    expect(code is not None, f"threadsignaltest -i pfq:{DEV2} did not end; it said "
                             f"{out.strip()[-300:]!r}; its threads: {stuck}")
    expect(code == 0 and "Loop got broken" in out,
           f"threadsignaltest -i pfq:{DEV2}: exit {code}, {out.strip()[-200:]!r}")


def _testprogs_on_dev() -> None:
    code, out = run_testprog([testprog("findalldevstest")])
    expect(code == 0 and f"pfq:{DEV}" in out, f"findalldevstest: exit {code}, "
                                              f"{out.strip()[-200:]!r}")
    code, out = run_testprog([testprog("opentest"), "-i", f"pfq:{DEV}"])
    expect(code == 0 and f"pfq:{DEV} opened successfully" in out,
           f"opentest: exit {code}, {out.strip()[-200:]!r}")
    # It opens lo (and no other device) twice, the second activation refused.
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    code, out = run_testprog([testprog("reactivatetest")])
    expect(code == 0, f"reactivatetest: exit {code}, {out.strip()[-200:]!r}")
    sent = [ipv4(1, 2, 17, 9000 + i, 9, 5000 + i) for i in range(20)]
    for argv in ([testprog("capturetest")], [testprog("selpolltest"), "-p"],
                 [testprog("selpolltest"), "-s", "-t"], [testprog("selpolltest"), "-p", "-n"]):
        name = " ".join([Path(argv[0]).name, *argv[1:]])
        for device in (DEV, f"pfq:{DEV}"):
            seen, out = seen_by(argv, device, sent)
            expect(seen == len(sent), f"{name} -i {device}: saw {seen} of {len(sent)}: "
                                      f"{out.strip()[-200:]!r}")
        no_group_left()
    burst = [ipv4(1, 2, 17, 9100 + i, 9, 6000 + i) for i in range(64)]
    for device in (DEV, f"pfq:{DEV}"):
        # It breaks its loop at the first frame it is given; with no timeout set, a
        # TPACKET_V3 block reaches user space only when full: bursts until it ends.
        proc = subprocess.Popen([testprog("nonblocktest"), "-i", device],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + WAIT
        while proc.poll() is None and time.monotonic() < deadline:
            inject(DEV, burst)
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            out = (proc.communicate()[0] or "").strip()[-200:]
            raise CheckFailed(f"nonblocktest -i {device} did not end: {out!r}")
        code, out = finish(proc, interrupt=False)
        expect(code == 0 and "failed as expected" in out,
               f"nonblocktest -i {device}: exit {code}, {out.strip()[-200:]!r}")
    no_group_left()


# --- dumpcap -------------------------------------------------------------------------------

def wait_line(proc: subprocess.Popen[str], text: str) -> None:
    """Wait until `proc` writes `text` to its stderr (read from the pipe itself, so that
    what follows stays for communicate())."""
    assert proc.stderr is not None
    deadline, said = time.monotonic() + WAIT, b""
    while text.encode() not in said:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stderr], [], [], left)[0]:
            raise CheckFailed(f"{program(proc)} never said {text!r}: {said[-300:]!r}")
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            code, err = finish(proc, interrupt=False)
            raise CheckFailed(f"{program(proc)} ended ({code}) before saying {text!r}: "
                              f"{(said.decode(errors='replace') + err).strip()[-300:]!r}")
        said += chunk


def pcapng_frames(path: Path) -> list[bytes]:
    """The frames of a pcapng file's enhanced packet blocks (little-endian, as written
    on this machine)."""
    data = path.read_bytes()
    expect(data[:4] == b"\x0a\x0d\x0d\x0a" and data[8:12] == b"\x4d\x3c\x2b\x1a",
           f"{path}: not a little-endian pcapng file")
    out, at = [], 0
    while at + 12 <= len(data):
        kind, length = struct.unpack_from("<II", data, at)
        expect(length >= 12 and at + length <= len(data), f"{path}: a block cut at {at}")
        if kind == 6:  # enhanced packet block: interface, stamp (2), lengths (2), frame
            (caplen,) = struct.unpack_from("<I", data, at + 20)
            out.append(data[at + 28:at + 28 + caplen])
        at += length
    return out


def check_dumpcap(config: Config) -> None:
    """Wireshark's dumpcap (what tshark and Wireshark capture through: select() on the
    pcap fd, then pcap_dispatch()) on pfq:DEV: exactly the frames sent, in its pcapng
    file, and it ends by itself after -c N.

    dumpcap drops CAP_IPC_LOCK even as root, so its ring counts against RLIMIT_MEMLOCK:
    at 64 KiB (the default before Linux 5.16) its 2 MiB buffer is refused with a message
    that says so; at 8 MiB (the default since) it captures."""
    sent = [ipv4(1, 2, 17, 9400 + i, 9, 9000 + i) for i in range(40)]
    path = fresh("dumpcap.pcapng")
    set_mode(DEV, "tap")
    try:
        code, err = finish(_wireshark(DUMPCAP, ["-i", f"pfq:{DEV}", "-c", "1", "-w", str(path)],
                                      64 << 10), interrupt=False)
    finally:
        set_mode(DEV, "pass")
    expect(code != 0 and "ulimit -l: 64 KiB" in err,
           f"dumpcap with a memory-lock limit of 64 KiB: exit {code}: {err.strip()[-300:]}")
    code, err = _capture_sent(DUMPCAP, ["-c", str(len(sent)), "-w", str(path)], sent)
    expect(code == 0, f"dumpcap exit {code}: {err.strip()[-300:]}")
    got = pcapng_frames(path)
    expect(got == sent, f"dumpcap wrote {len(got)} frames, {sum(f in sent for f in got)} "
                        f"of the {len(sent)} sent")
    no_group_left()


def check_tshark(config: Config) -> None:
    """Wireshark's tshark on pfq:DEV: it captures through the dumpcap beside it, which it
    runs with its own environment (so on the library under test), and decodes exactly
    the frames sent, in their order."""
    sent = [ipv4(1, 2, 17, 9500 + i, 9, 9000 + i) for i in range(40)]
    fields = fresh("tshark.txt")
    with open(fields, "w") as out:
        code, err = _capture_sent(TSHARK, ["-c", str(len(sent)), "-T", "fields",
                                           "-e", "udp.srcport", "-e", "udp.dstport"],
                                  sent, stdout=out)
    expect(code == 0, f"tshark exit {code}: {err.strip()[-300:]}")
    got = fields.read_text().split("\n")[:-1]
    want = [f"{9500 + i}\t9" for i in range(len(sent))]
    expect(got == want, f"tshark decoded {len(got)} frames, {sum(g in want for g in got)} "
                        f"of the {len(sent)} sent: {got[:3]}")
    no_group_left()


def _capture_sent(program: str, args: list[str], sent: list[bytes],
                  stdout: int | TextIO = subprocess.PIPE) -> tuple[int, str]:
    """Wireshark's `program` capturing on pfq:DEV in tap mode while `sent` is fed, with
    the memory-lock limit of Linux 5.16 and later (8 MiB): its status and stderr."""
    set_mode(DEV, "tap")
    try:
        proc = _wireshark(program, ["-i", f"pfq:{DEV}", *args], 8 << 20, stdout=stdout)
        try:
            # dumpcap says where it writes once the capture is open (it opens the device
            # once before, to ask what it can do); tshark passes that on, its own
            # "Capturing on" comes before dumpcap even starts.
            wait_line(proc, "File: ")
            inject(DEV, sent)
            return finish(proc, interrupt=False)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        set_mode(DEV, "pass")


def _wireshark(program: str, args: list[str], memlock: int,
               stdout: int | TextIO = subprocess.PIPE) -> subprocess.Popen[str]:
    """Wireshark's dumpcap (or tshark, which runs it) on the library under test, with
    RLIMIT_MEMLOCK at `memlock` bytes."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))
    return subprocess.Popen([program, *args],
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp",
                                 "LD_LIBRARY_PATH": LIBDIR},
                            stdout=stdout, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)


# --- a flow monitor ------------------------------------------------------------------------

#: A NetFlow v5 record's flow key: source, destination, protocol, source and destination
#: port.
FlowKey = tuple[bytes, bytes, int, int, int]


def flow_key(frame: bytes) -> FlowKey:
    """An Ethernet frame's IPv4 5-tuple (a header of 20 bytes, as omatic.lab.groupcheck
    builds them)."""
    sport, dport = struct.unpack("!HH", frame[34:38])
    return frame[26:30], frame[30:34], frame[23], sport, dport


def netflow_v5(datagram: bytes) -> list[tuple[FlowKey, int]]:
    """The records of a NetFlow v5 export datagram: flow key and packets."""
    expect(len(datagram) >= 24, f"a NetFlow datagram of {len(datagram)} bytes")
    version, count = struct.unpack_from("!HH", datagram)
    expect(version == 5 and len(datagram) == 24 + 48 * count,
           f"NetFlow version {version}, {count} records in {len(datagram)} bytes")
    out = []
    for at in range(24, len(datagram), 48):
        src, dst, _hop, _in, _out, packets, _octets, _first, _last, sport, dport, _pad, \
            _flags, proto = struct.unpack_from("!4s4s4sHHIIIIHHBBB", datagram, at)
        out.append(((src, dst, proto, sport, dport), packets))
    return out


def collected(sock: socket.socket) -> list[tuple[FlowKey, int]]:
    """Every record a collector got (its datagrams are on loopback: there already)."""
    sock.setblocking(False)
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out += netflow_v5(sock.recv(65535))
    return out


def check_flow_monitor(config: Config) -> None:
    """4 softflowd (Debian's NetFlow exporter) started alike with PCAP_GROUP=6
    PCAP_FANOUT=hash on pfq:DEV, each exporting NetFlow v5 to a collector of its own on
    127.0.0.1, shut down gracefully (softflowctl), which exports every flow: together
    they report each direction of each IPv4 flow sent once, with its packets, and both
    directions of a flow come from the same one."""
    sent, flow_of = flows(32, 4)
    sent = [frame for frame in sent if frame[12:14] == b"\x08\x00"]  # v5 is IPv4 only
    want: dict[FlowKey, int] = {}
    for frame in sent:
        want[flow_key(frame)] = want.get(flow_key(frame), 0) + 1
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=WAIT)
    set_mode(DEV, "tap")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": LIBDIR,
           "PCAP_GROUP": "6", "PCAP_FANOUT": "hash"}
    with contextlib.ExitStack() as stack:
        collectors = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                      for _ in range(4)]
        procs, controls = [], [str(fresh(f"softflowd.{i}.ctl")) for i in range(4)]
        for sock, control in zip(collectors, controls, strict=True):
            sock.bind(("127.0.0.1", 0))
            # -i IDX:DEV is softflowd's syntax: an empty index keeps `pfq:DEV` whole.
            procs.append(subprocess.Popen(
                [SOFTFLOWD, "-d", "-i", f":pfq:{DEV}", "-v", "5", "-c", control,
                 "-n", f"127.0.0.1:{sock.getsockname()[1]}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        try:
            members(6, 4, procs)
            inject(DEV, sent)
            drained(procs)
            for control in controls:
                told = subprocess.run([SOFTFLOWCTL, "-c", control, "shutdown"],
                                      capture_output=True, text=True, timeout=WAIT)
                expect(told.returncode == 0, f"softflowctl shutdown: exit {told.returncode}"
                                             f" {(told.stderr or told.stdout).strip()!r}")
            # softflowd 1.1.0 exits 1 after a shutdown by its control socket (its status
            # is then its last poll()'s count): what it says tells how it ended.
            for code, out in [finish(proc, interrupt=False) for proc in procs]:
                expect(code in (0, 1) and "Shutting down on user request" in out,
                       f"softflowd exit {code}: {out.strip()[-300:]}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            set_mode(DEV, "pass")
        reports = [collected(sock) for sock in collectors]
    flow_by_key = {flow_key(frame): flow_of[frame] for frame in sent}
    got: dict[FlowKey, int] = {}
    flows_of: list[set[int]] = []
    for records_of_one in reports:
        flows_of.append(set())
        for key, packets in records_of_one:
            expect(key not in got, f"{key} reported twice")
            got[key] = packets
            flows_of[-1].add(flow_by_key.get(key, -1))
    expect(got == want, f"{len(got)} flow directions reported, {len(want)} sent; "
                        f"differing: {sorted(set(got.items()) ^ set(want.items()))[:4]}")
    for i, mine in enumerate(flows_of):
        for j, theirs in enumerate(flows_of[:i]):
            expect(not mine & theirs, f"flows {sorted(mine & theirs)} split between "
                                      f"softflowd {j} and {i}")
    expect(sum(1 for mine in flows_of if mine) >= 2, f"one softflowd had every flow: "
                                                     f"{[len(m) for m in flows_of]}")
    no_group_left()


CHECKS: list[tuple[str, Callable[[Config], None]]] = [
    ("libpcap_version_says_pfq", check_version),
    ("tcpdump_exact_nanoseconds", check_exact_nanoseconds),
    ("tcpdump_plain_device_af_packet", check_plain_device_is_af_packet),
    ("pcap_next_ex_copies_the_frame", check_next_ex_copies),
    ("tcpdump_fanout_4_hash", check_fanout_hash),
    ("tcpdump_fanout_copy", check_fanout_copy),
    ("tcpdump_filter_in_kernel", check_filter_in_kernel),
    ("tcpdump_conflicting_fanout_refused", check_conflicting_fanout),
    ("tcpdump_bad_input", check_bad_input),
    ("tcpdump_stats_ring_overflow", check_stats_on_overflow),
    ("libpcap_testprogs_as_on_the_device", check_testprogs),
    ("dumpcap_exact_frames", check_dumpcap),
    ("tshark_decodes_exact_frames", check_tshark),
    ("softflowd_4_hash_netflow", check_flow_monitor),
]


def main(argv: Iterable[str]) -> int:
    global LIBDIR
    (LIBDIR,) = list(argv)
    print("\n".join(run_checks(CHECKS, {})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
