#!/usr/bin/env python3
"""Benchmark: what PFQ costs the receive path, in a guest, against pass mode and against
the stock peer for the same job, AF_PACKET with a TPACKET_V3 ring and PACKET_FANOUT.

Usage: bench/fanout.py [--kernel 6.1] [--count]

Boots the hook lab's guest (pfq.ko and the accelerated hook test module, omatic.lab.hooks)
with omatic.lab.rxbench on, whose docstring says what is timed and how. Prints two
measures of one run, set-ups taking turns:
- ns per frame of each set-up and its cost over pass (the stack alone), with one CPU and
  with two feeding at once, and the ratios PFQ / AF_PACKET;
- frames per second delivered to C readers (bench/reader.c) for a burst larger than
  their rings, with the drops each side counted.
Under TCG the absolute figures mean little; the ratios, measured in one run, are the
result. A set-up's time varies by about 1.5x from one run to the next under TCG, so
`--count` measures the one-CPU cost set-ups again in a guest whose clock counts
instructions (QEMU's -icount): its figures are instructions per frame, the same in every
run, blind to what an instruction costs (a cache miss, a locked one) but not to noise.
Its guest has one vCPU (6.1's second never comes up under -icount with QEMU 7.2), so
the lab's checks that feed from two CPUs are left out of it.
Targets (the data-path issue): PFQ's cost over pass at most half AF_PACKET's for 1 and
for 4 fanned-out readers (tap); capture with 4 hash-steered endpoints at least 2.5x the
frame rate of 4 AF_PACKET fan-out sockets; two CPUs feeding at least 1.6x one's rate.
Capture with no group feeds and frees every frame and copies none: the floor of capture
mode, so the most that last ratio could be on that kernel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from omatic.kernels.find import default_kernel, find_kernel
from omatic.lab.hooks import GuestBenchError, HookLabConfig, run_guest_bench

HERE = Path(__file__).resolve().parent
UAPI_INCLUDE = HERE.parent / "kmod" / "include"


def build_reader(out: Path) -> Path:
    """bench/reader.c, static (the guest has no C library of its own)."""
    program = out / "pfq-bench-reader"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-static", "-I", str(UAPI_INCLUDE),
                    "-o", str(program), str(HERE / "reader.c")], check=True)
    return program


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None, help="release or series (default: default)")
    parser.add_argument("--count", action="store_true",
                        help="count instructions per frame (one CPU) instead of timing")
    args = parser.parse_args()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-bench-") as tmp:
        reader = None if args.count else build_reader(Path(tmp))
        try:
            result, bench = run_guest_bench(HookLabConfig(
                kernel=kernel, out_root=Path(tmp), bench="omatic.lab.rxbench", reader=reader,
                icount=args.count, timeout=900.0 if args.count else 1800.0))
        except GuestBenchError as err:
            print(err, file=sys.stderr)
            return 2
    ns = bench["ns_per_frame"]
    unit = "insns/frame" if bench["icount"] else "ns/frame"
    print(f"kernel {kernel.release}, {result.report['accel']}"
          f"{', instructions counted' if bench['icount'] else ''}, clocksource "
          f"{bench['clocksource']}; {bench['frames']} frames per burst and CPU, "
          f"best of {bench['runs']}")
    for name, value in ns.items():
        base = ns["pass_2cpu" if name.endswith("_2cpu") else "pass"]
        over = "" if name.startswith("pass") else f"  ({value - base:+8.1f} over pass)"
        rate = "" if bench["icount"] else f"  {1e9 / value:12,.0f} frames/s"
        print(f"  {name:22} {value:9.1f} {unit}{rate}{over}")

    def cost(name: str) -> float:
        return ns[name] - ns["pass"]

    print("PFQ's cost over pass / AF_PACKET's (target at most 0.5):")
    print(f"  1 reader:              {cost('tap_1_endpoint') / cost('af_packet_1'):.2f}")
    print(f"  4 fanned-out readers:  {cost('tap_4_hash') / cost('af_packet_4_hash'):.2f}")
    print(f"PFQ capture 4 hash / AF_PACKET 4 fan-out hash, frame rate (target 2.5): "
          f"{ns['af_packet_4_hash'] / ns['capture_4_hash']:.2f}")
    # With no reader, capture mode still feeds and frees every frame: no copy does less.
    print(f"  at most, with no copy (capture, no group): "
          f"{ns['af_packet_4_hash'] / ns['capture_no_group']:.2f}; the copies to 4 hash-steered "
          f"endpoints cost {ns['capture_4_hash'] - ns['capture_no_group']:+.1f} {unit}")
    if bench["icount"]:
        return 0
    print("two CPUs feeding / one, frame rate (target 1.6):")
    for name in ("pass", "af_packet_4_hash", "tap_4_hash", "capture_4_hash"):
        print(f"  {name:22} {ns[name] / ns[name + '_2cpu']:.2f}")
    delivery = bench["delivery"]
    print(f"delivered to C readers, a burst of {bench['burst']} frames (rings of about "
          f"1024-1600 frames per reader):")
    for name, got in delivery.items():
        print(f"  {name:22} {got['per_second']:12,.0f} frames/s  delivered "
              f"{got['delivered']:6}  dropped {got['dropped']:6}")
    for pfq, peer in (("tap_1_endpoint", "af_packet_1"), ("tap_4_hash", "af_packet_4_hash"),
                      ("capture_4_hash", "af_packet_4_hash")):
        print(f"  {pfq} / {peer}: {delivery[pfq]['per_second'] / delivery[peer]['per_second']:.2f}"
              f"x the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
