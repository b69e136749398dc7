"""The receive path timed in the hook lab's guest: run there as
`python3 -S -m omatic.lab.rxbench CONFIG` (bench/fanout.py asks omatic.lab.hooks for it).

Two measures, on the same UDP frames of 64 flows to port 9, fed by the hook test module
from NAPI poll (omatic.lab.groupcheck.inject_request), set-ups taking turns within each run so
that a slower moment of the machine weighs on all of them:

- cost: nanoseconds per frame the hooks take, as the module times a burst (best of the
  runs). One CPU feeds hk-gro; in the `_2cpu` set-ups CPU 0 feeds hk-gro's first rx
  queue and CPU 1 its second at once (each queue with its own NAPI), and the
  figure is the wall time from the first feed's start to the last one's end, over all
  their frames. The readers have room for the whole burst; what they got is counted by
  the kernel, not read.
- delivery: frames per second that reach readers in user space, written in C
  (bench/reader.c, staged into the guest), for a burst larger than their rings, with
  the drops each side counts. Readers run while the burst is fed.

AF_PACKET sees frames where the stack does, so its set-ups run in pass mode, as a stock
driver's device would. Standard library and omatic only: the guest's python3 has
nothing else. Prints one line, `OMATIC-BENCH {json}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic.lab import afpacket
from omatic.lab.groupcheck import (
    DEV,
    CheckFailed,
    Config,
    expect,
    group,
    inject_request,
    inject_written,
    ipv4,
    set_mode,
)
from omatic.pfq.endpoint import Endpoint
from omatic.pfq.uapi import STEER_MODES

#: DEV's second rx queue (the hook test module's name for it), for two CPUs at once.
DEV_Q1 = f"{DEV}:1"
#: The guest's realtime clocksource: what a clock read costs depends on it.
CLOCKSOURCE = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
#: A task stuck this long in the kernel has its stack logged, so that a bench that
#: hangs says where (the kernel's default, 120 s, is longer than a whole run).
HUNG_TASK_SECONDS = Path("/proc/sys/kernel/hung_task_timeout_secs")
#: No set-up ending for this long: the kernel is asked for every CPU's backtrace and
#: every task's state (sysrq l, t), on the console, once.
STALL_SECONDS = 60.0
SYSRQ = Path("/proc/sysrq-trigger")
#: The console's log level: the dump is printed at KERN_INFO, which `quiet` hides.
PRINTK = Path("/proc/sys/kernel/printk")


class Watchdog:
    """Logs the guest's state when the bench stops making progress (see STALL_SECONDS);
    `progress()` after each set-up. Its own sleeps need the guest's timers: a stall
    with no dump afterwards says they stopped too."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def progress(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(5.0):
            if time.monotonic() - self._last > STALL_SECONDS:
                print(f"bench: no set-up ended in {STALL_SECONDS:.0f} s; the kernel's view:",
                      file=sys.stderr, flush=True)
                PRINTK.write_text("8")
                for key in "lt":
                    SYSRQ.write_text(key)
                return

#: The cost measure's set-ups: name, device mode, readers' kind, how many, steering or
#: fan-out mode, BPF program, CPUs feeding.
COST_SETUPS: list[tuple[str, str, str, int, str, bool, int]] = [
    ("pass", "pass", "pfq", 0, "copy", False, 1),
    ("af_packet_1", "pass", "af_packet", 1, "", False, 1),
    ("af_packet_4_hash", "pass", "af_packet", 4, "hash", False, 1),
    ("tap_no_group", "tap", "pfq", 0, "copy", False, 1),
    ("tap_1_endpoint", "tap", "pfq", 1, "copy", False, 1),
    ("tap_4_hash", "tap", "pfq", 4, "hash", False, 1),
    ("tap_4_hash_bpf", "tap", "pfq", 4, "hash", True, 1),
    ("capture_4_hash", "capture", "pfq", 4, "hash", False, 1),
    ("capture_no_group", "capture", "pfq", 0, "copy", False, 1),
    ("pass_2cpu", "pass", "pfq", 0, "copy", False, 2),
    ("af_packet_4_hash_2cpu", "pass", "af_packet", 4, "hash", False, 2),
    ("tap_4_hash_2cpu", "tap", "pfq", 4, "hash", False, 2),
    ("capture_4_hash_2cpu", "capture", "pfq", 4, "hash", False, 2),
]

#: The delivery measure's set-ups: name, device mode, readers' kind, how many, mode.
DELIVERY_SETUPS: list[tuple[str, str, str, int, str]] = [
    ("af_packet_1", "pass", "af_packet", 1, "hash"),
    ("tap_1_endpoint", "tap", "pfq", 1, "copy"),
    ("af_packet_4_hash", "pass", "af_packet", 4, "hash"),
    ("tap_4_hash", "tap", "pfq", 4, "hash"),
    ("capture_4_hash", "capture", "pfq", 4, "hash"),
]
#: Ring sizes of the delivery measure, alike in memory: a PFQ endpoint of 1024 slots of
#: 256 bytes (288 KiB); an AF_PACKET socket of 4 blocks of 64 KiB (about 1600 frames of
#: this size).
PFQ_SLOTS, PFQ_CAPLEN = 1024, 256
AF_BLOCKS, AF_BLOCK_SIZE = 4, 1 << 16


def frames_of(n: int, start: int = 0) -> list[bytes]:
    """`n` UDP frames of 64 flows to port 9 (which the BPF program passes)."""
    return [ipv4(1 + f % 200, 2, 17, 1024 + f, 9, start + i)
            for i, f in ((i, i % 64) for i in range(n))]


def _readers(stack: ExitStack, kind: str, n: int, steer: str, frames: int
             ) -> tuple[list[Endpoint], Callable[[], int]]:
    """`n` readers of DEV of `kind` (the endpoints, when PFQ's) with room for `frames`,
    and what counts the frames they got, from the kernel's counters: nothing is read, so
    Python's pace weighs on no figure."""
    if kind == "af_packet":
        size = afpacket.RingSize(blocks=max(16, frames * 256 // afpacket.RingSize.block_size))
        socks = [stack.enter_context(afpacket.PacketSocket(
            DEV, size, (7, steer) if n > 1 else None)) for _ in range(n)]
        return [], lambda: sum(packets - drops for packets, drops in
                               (sock.stats() for sock in socks))
    eps = group(stack, n, 12, steer, dev=DEV, slots=frames, caplen=128) if n else []
    return eps, lambda: sum(ep.stats().delivered for ep in eps)


def feed(feeds: Sequence[tuple[str, int, Sequence[bytes]]]) -> tuple[int, int]:
    """Feed each (device or queue, CPU, frames) from a thread pinned to that CPU, all at
    once; when the first feed started (CLOCK_MONOTONIC ns) and the nanoseconds from then
    to the last one's end, as the module timed them. The writes are built beforehand:
    under one interpreter lock, building one would delay the other's start and the feeds
    would take turns."""
    start, spans, errors = threading.Barrier(len(feeds)), [], []

    def one(dev: str, cpu: int, frames: Sequence[bytes]) -> None:
        try:
            request = inject_request(dev, frames)
            os.sched_setaffinity(0, {cpu})
            start.wait(timeout=60)  # broken, not waited on forever, if another failed
            said = inject_written(dev, request)
            spans.append((said["start"], said["start"] + said["ns"]))
        except BaseException as err:  # reported below, in the calling thread
            errors.append(err)

    threads = [threading.Thread(target=one, args=f) for f in feeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise CheckFailed(f"feeding failed: {errors[0]!r}")
    first = min(begin for begin, _ in spans)
    return first, max(end for _, end in spans) - first


def cost(config: Config, frames: int, runs: int, progress: Callable[[], None],
         cpus_at_most: int = 2) -> dict[str, float]:
    """Nanoseconds per frame of each of COST_SETUPS fed by at most `cpus_at_most` CPUs,
    best of `runs`; `progress()` after each set-up."""
    program = [tuple(insn) for insn in config["udp_dst_9"]]
    sent = {DEV: frames_of(frames), DEV_Q1: frames_of(frames, start=frames)}
    setups = [setup for setup in COST_SETUPS if setup[-1] <= cpus_at_most]
    best: dict[str, int] = {}
    for _ in range(runs):
        for name, mode, kind, n, steer, bpf, cpus in setups:
            with ExitStack() as stack:
                eps, take = _readers(stack, kind, n, steer, frames * cpus)
                if bpf:
                    eps[0].set_filter(program)
                set_mode(DEV, mode)
                _, ns = feed([(queue, cpu, sent[queue])
                           for cpu, queue in enumerate([DEV, DEV_Q1][:cpus])])
                delivered = take()
                set_mode(DEV, "pass")
            expect(delivered == (frames * cpus if n else 0),
                   f"bench {name}: {delivered} of {frames * cpus} frames delivered")
            best[name] = min(best.get(name, ns), ns)
            progress()
            print(f"cost {name}: {ns / (frames * cpus):.1f} ns/frame", file=sys.stderr,
                  flush=True)
    return {name: round(best[name] / (frames * cpus), 1) for name, *_, cpus in setups}


def reader_argv(program: str, kind: str, n: int, mode: str) -> list[str]:
    """bench/reader.c's command line: `n` readers of DEV of `kind` (af_packet, pfq)
    fanned out or steered by `mode`, with the rings of the delivery measure."""
    if kind == "af_packet":
        fanout = {"hash": 0, "lb": 1, "cpu": 2}[mode]
        return [program, "afpacket", DEV, str(n), str(fanout), str(AF_BLOCKS),
                str(AF_BLOCK_SIZE), "8" if n > 1 else "-1"]
    return [program, "pfq", DEV, str(n), str(STEER_MODES[mode]), str(PFQ_SLOTS),
            str(PFQ_CAPLEN), "13"]


def queue_feeds(sent: Sequence[bytes], queues: int) -> list[tuple[str, int, Sequence[bytes]]]:
    """`sent` spread over DEV's first `queues` rx queues (1 or 2), each fed from a CPU of
    its own (queue q from CPU q), by flow as a NIC's RSS does: frames_of() gives frame i
    flow i % 64, so the flows of even index go to queue 0, the others to queue 1."""
    return [(queue, cpu, sent[cpu::queues])
            for cpu, queue in enumerate([DEV, DEV_Q1][:queues])]


def deliver(argv: Sequence[str], sent: Sequence[bytes], env: dict[str, str] | None = None,
            reader_cpus: frozenset[int] = frozenset({1}), queues: int = 1
            ) -> dict[str, float]:
    """Start the C readers `argv` (on `reader_cpus`), feed `sent` through DEV's first
    `queues` rx queues (queue_feeds()), let them drain, stop them: frames delivered,
    dropped, delivered per second from the first frame fed to the last one read, frames
    fed per second while the feed ran (the module's own span), and the times the readers
    slept per frame delivered."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=lambda: os.sched_setaffinity(0, reader_cpus))
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip()
        if ready != "ready":  # their stderr ends only when they do: read it only then
            proc.kill()
            raise CheckFailed(f"the readers did not start: {ready!r} "
                              f"{proc.communicate(timeout=30)[1]!r}")
        fed_start, fed_ns = feed(queue_feeds(sent, queues))
        time.sleep(0.3)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fields = dict(item.split("=") for item in out.split())
    expect(proc.returncode == 0
           and set(fields) == {"delivered", "dropped", "last_ns", "sleeps"},
           f"the readers said {out!r} {err!r}")
    delivered, dropped, last, sleeps = (
        int(fields[k]) for k in ("delivered", "dropped", "last_ns", "sleeps"))
    # From the feed's start as the module took it (CLOCK_MONOTONIC, as the readers'
    # stamps): not the write's, which first copies and parses the whole burst.
    seconds = max(last - fed_start, 1) / 1e9
    return {"delivered": delivered, "dropped": dropped,
            "per_second": round(delivered / seconds),
            "fed_per_second": round(len(sent) / max(fed_ns, 1) * 1e9),
            "sleeps_per_frame": round(sleeps / max(delivered, 1), 3)}


@dataclass(frozen=True)
class Delivery:
    """One set-up of a delivery measure: the device's mode, the readers' command line
    and environment, the CPUs they may run on, how many copies of each frame they get
    between them (4 readers with no fan-out get 4), and how many of the device's rx
    queues feed it (queue_feeds())."""
    mode: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    reader_cpus: frozenset[int] = frozenset({1})
    copies: int = 1
    queues: int = 1


def delivery_of(setups: Mapping[str, Delivery], frames: int, runs: int,
                progress: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Each set-up fed a burst of `frames`, taking turns, `runs` times: the run with the
    most frames per second; every frame is delivered or counted dropped. `progress()`
    after each set-up."""
    sent = frames_of(frames)
    best: dict[str, dict[str, float]] = {}
    for _ in range(runs):
        for name, setup in setups.items():
            set_mode(DEV, setup.mode)
            got = deliver(setup.argv, sent, setup.env, setup.reader_cpus, setup.queues)
            set_mode(DEV, "pass")
            expect(got["delivered"] + got["dropped"] == frames * setup.copies,
                   f"delivery {name}: {got['delivered']} delivered + {got['dropped']} "
                   f"dropped of {frames} sent, {setup.copies} copies each")
            progress()
            print(f"delivery {name}: {got}", file=sys.stderr, flush=True)
            if got["per_second"] > best.get(name, {}).get("per_second", 0):
                best[name] = got
    return best


def delivery(config: Config, frames: int, runs: int, progress: Callable[[], None]
             ) -> dict[str, dict[str, float]]:
    """DELIVERY_SETUPS with bench/reader.c's own readers."""
    return delivery_of({name: Delivery(mode, reader_argv(config["reader"], kind, n, steer))
                        for name, mode, kind, n, steer in DELIVERY_SETUPS},
                       frames, runs, progress)


def bench(config: Config, frames: int = 16384, runs: int = 40,
          burst: int = 16384, delivery_runs: int = 5) -> dict[str, Any]:
    """Both measures; under QEMU's -icount (`config["icount"]`), where a span is the
    instructions run in it and two vCPUs take turns, the one-CPU cost set-ups only, and
    runs differ only by what the kernel does besides (timer ticks): 3 are enough."""
    if HUNG_TASK_SECONDS.exists():
        HUNG_TASK_SECONDS.write_text("20")
    icount = bool(config.get("icount"))
    runs = 3 if icount else runs
    with Watchdog() as watchdog:
        return {"frames": frames, "runs": runs, "icount": icount,
                "clocksource": CLOCKSOURCE.read_text().strip(),
                "ns_per_frame": cost(config, frames, runs, watchdog.progress,
                                     cpus_at_most=1 if icount else 2),
                "burst": burst,
                "delivery": delivery(config, burst, delivery_runs, watchdog.progress)
                if config.get("reader") and not icount else None}


def bench_main(argv: Iterable[str], measure: Callable[[Config], dict[str, Any]]) -> int:
    """A guest bench's entry (this module's, omatic.lab.pcapbench's): `measure` with the
    configuration file named in `argv`, and print its figures as one OMATIC-BENCH line."""
    (config_path,) = list(argv)
    result = measure(json.loads(Path(config_path).read_text()))
    print("OMATIC-BENCH " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:], bench))
