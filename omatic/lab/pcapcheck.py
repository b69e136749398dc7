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

import os
import pty
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

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
        args = proc.args
        name = Path(str(args[0] if isinstance(args, list | tuple) else args)).name
        raise CheckFailed(f"{name} did not end: {(err or out or '').strip()[-200:]}") from None
    # Its errors, or all it said when they went to stdout too.
    return proc.returncode, err if err is not None else out


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
                raise CheckFailed(f"tcpdump ended before {what}: {err.strip()[-300:]}")
        expect(time.monotonic() < deadline, f"no {what} after {WAIT} s")
        time.sleep(0.05)


def members(gid: int, n: int, procs: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until group `gid` has `n` endpoints bound to DEV."""
    wait_for(lambda: groups_on(DEV).get(gid, {}).get("endpoints") == str(n),
             f"{n} tcpdump(s) in group {gid}", procs)


def drained(procs: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until every ring is empty: the tcpdumps took all they were given."""
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


def check_testprogs(config: Config) -> None:
    """libpcap's own test programs, built from the same source: on pfq:DEV as on DEV.
    threadsignaltest breaks a blocked capture from another thread after 60 s: it runs
    on DEV2 meanwhile."""
    set_mode(DEV, "tap")
    set_mode(DEV2, "tap")
    signalled, signalled_output = on_terminal([testprog("threadsignaltest"), "-i",
                                               f"pfq:{DEV2}"])
    try:
        _testprogs_on_dev()
        code = signalled.wait(timeout=90)
    except subprocess.TimeoutExpired:
        raise CheckFailed("threadsignaltest did not end") from None
    finally:
        if signalled.poll() is None:
            signalled.kill()
            signalled.wait()
    out = signalled_output()
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


CHECKS: list[tuple[str, Callable[[Config], None]]] = [
    ("libpcap_version_says_pfq", check_version),
    ("tcpdump_exact_nanoseconds", check_exact_nanoseconds),
    ("tcpdump_plain_device_af_packet", check_plain_device_is_af_packet),
    ("tcpdump_fanout_4_hash", check_fanout_hash),
    ("tcpdump_fanout_copy", check_fanout_copy),
    ("tcpdump_filter_in_kernel", check_filter_in_kernel),
    ("tcpdump_conflicting_fanout_refused", check_conflicting_fanout),
    ("tcpdump_bad_input", check_bad_input),
    ("tcpdump_stats_ring_overflow", check_stats_on_overflow),
    ("libpcap_testprogs_as_on_the_device", check_testprogs),
]


def main(argv: Iterable[str]) -> int:
    global LIBDIR
    (LIBDIR,) = list(argv)
    print("\n".join(run_checks(CHECKS, {})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
