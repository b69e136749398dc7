#!/usr/bin/env python3
"""Benchmark: what an unmodified pcap application gets through PFQ, against libpcap's own
AF_PACKET capture and against AF_PACKET fan-out, in one guest and one run.

Usage: bench/pcap.py [--kernel 6.1]

Builds (or finds) the libpcap of `pfq-omatic pcap` for this machine's suite and
bench/reader.c against it, boots the hook lab's guest (omatic.lab.hooks) with
omatic.lab.pcapbench on, whose docstring says what is timed and how, and prints frames
delivered per second and dropped, for one burst larger than the rings, per set-up: best
of the runs, set-ups taking turns. The device is fed through two rx queues, one per vCPU,
as a multi-queue NIC is; the `_one_queue` set-ups through one. Under TCG the absolute
figures mean little; the ratios, measured in one run, are the result.
Targets (the libpcap issue), with the guest's 2 vCPUs (so 2x is the limit): 4 pfq:DEV
instances fanned out (PCAP_FANOUT=hash) deliver at least 1.7x what one libpcap instance
on DEV (AF_PACKET, TPACKET_V3) delivers, and at least 1x what 4 AF_PACKET sockets in a
PACKET_FANOUT_HASH group deliver: with readers that only write each frame, and with
readers that also work on each frame (the `_work` set-ups). Exit 0 when all are met.
Beside each set-up: frames fed per second while the feed ran (with no drop, the
delivered rate is that, as the CPU the readers leave the feed) and the readers' sleeps
per frame delivered.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from omatic.kernels.find import default_kernel, find_kernel
from omatic.lab.hooks import GuestBenchError, HookLabConfig, run_guest_bench
from omatic.pcap.build import lab_libpcap

HERE = Path(__file__).resolve().parent
UAPI_INCLUDE = HERE.parent / "kmod" / "include"
#: The targets: (PFQ set-up, peer, least ratio of their frame rates).
TARGETS = (("pfq_tap_4_hash", "libpcap_af_packet_1", 1.7),
           ("pfq_tap_4_hash", "af_packet_4_fanout_hash", 1.0),
           ("pfq_tap_4_hash_work", "libpcap_af_packet_1_work", 1.7),
           ("pfq_tap_4_hash_work", "af_packet_4_fanout_hash_work", 1.0))


def build_reader(out: Path, prefix: Path) -> Path:
    """bench/reader.c with its pcap kind, linked against the libpcap in `prefix` (the
    same SONAME as the system's: LD_LIBRARY_PATH picks which one the guest loads)."""
    program = out / "pfq-bench-pcap-reader"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-DWITH_PCAP", "-I", str(UAPI_INCLUDE),
                    "-I", str(prefix / "include"), "-o", str(program), str(HERE / "reader.c"),
                    "-L", str(prefix / "lib"), "-lpcap"], check=True)
    return program


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None, help="release or series (default: default)")
    args = parser.parse_args()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    libpcap = lab_libpcap(jobs=2)
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-bench-") as tmp:
        reader = build_reader(Path(tmp), libpcap.prefix)
        try:
            result, bench = run_guest_bench(HookLabConfig(
                kernel=kernel, out_root=Path(tmp), bench="omatic.lab.pcapbench", reader=reader,
                pcap_libdir=libpcap.libdir, timeout=1800.0))
        except GuestBenchError as err:
            print(err, file=sys.stderr)
            return 2
    delivery = bench["delivery"]
    print(f"kernel {kernel.release}, {result.report['accel']}, libpcap {libpcap.version}; "
          f"a burst of {bench['burst']} frames, rings of {bench['buffer_size'] >> 10} KiB "
          f"per reader, snaplen {bench['snaplen']}, best of {bench['runs']}")
    for name, got in delivery.items():
        # With no drop, the readers waited for frames: the rate is the feed's, a floor.
        print(f"  {name:30} {got['per_second']:12,.0f} frames/s  delivered "
              f"{got['delivered']:6}  dropped {got['dropped']:6}  fed "
              f"{got['fed_per_second']:9,.0f}/s  sleeps {got['sleeps_per_frame']:.3f}/frame"
              f"{'  (no drop: the feed was the limit)' if not got['dropped'] else ''}")

    def ratio(pfq: str, peer: str) -> float:
        return float(delivery[pfq]["per_second"] / delivery[peer]["per_second"])

    met = True
    for pfq, peer, target in TARGETS:
        met &= ratio(pfq, peer) >= target
        print(f"{pfq} / {peer}: {ratio(pfq, peer):.2f}x the rate (target {target})")
    for pfq, peer in (("pfq_tap_1", "libpcap_af_packet_1"),
                      ("pfq_capture_4_hash", "af_packet_4_fanout_hash"),
                      ("pfq_tap_4_hash", "pfq_tap_4_hash_no_timeout"),
                      ("pfq_tap_4_hash_one_queue", "libpcap_af_packet_1_one_queue")):
        print(f"{pfq} / {peer}: {ratio(pfq, peer):.2f}x the rate")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
