#!/usr/bin/env python3
"""Benchmark: what PFQ costs the receive path, in a guest, against pass mode and against
the stock peer for the same job, AF_PACKET.

Usage: bench/fanout.py [--kernel 6.1]

Boots the hook lab's guest (pfq.ko and the accelerated hook test module, omatic.lab.hooks)
with its bench on: omatic.lab.groupcheck.bench feeds the same bursts of UDP frames of 64
flows through napi_gro_receive's hook, as the module times them from NAPI poll, set-ups
taking turns: the device in pass mode (the stack alone); AF_PACKET with a TPACKET_V3 ring,
one socket and 4 in a PACKET_FANOUT_HASH group (pass mode: AF_PACKET sees what the stack
sees); PFQ in tap mode with no group, one endpoint, 4 hash-steered endpoints, and 4 with a
BPF program (`udp and dst port 9`, which every frame passes); and PFQ in capture mode with 4
hash-steered endpoints. The readers are drained between bursts, untimed. Prints
nanoseconds per frame and frames/s of each, each set-up's cost over pass, and the ratios
PFQ / AF_PACKET. Under TCG the absolute figures mean little; the ratios, measured in one
run, are the result.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from omatic.kernels.find import default_kernel, find_kernel
from omatic.lab.hooks import HookLabConfig, run_hook_lab


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default=None, help="release or series (default: default)")
    args = parser.parse_args()
    kernel = find_kernel(args.kernel) if args.kernel else default_kernel()
    with tempfile.TemporaryDirectory(prefix="pfq-omatic-bench-") as tmp:
        result = run_hook_lab(HookLabConfig(kernel=kernel, out_root=Path(tmp), bench=True))
    bench = result.report["bench"]
    if not result.ok or bench is None:
        print("the guest failed:", *result.failures, sep="\n  ", file=sys.stderr)
        return 2
    ns = bench["ns_per_frame"]
    print(f"kernel {kernel.release}, {result.report['accel']}, {bench['frames']} frames "
          f"per burst, best of {bench['runs']}")
    for name, value in ns.items():
        over = "" if name == "pass" else f"  ({value - ns['pass']:+8.1f} over pass)"
        print(f"  {name:16} {value:9.1f} ns/frame  {1e9 / value:12,.0f} frames/s{over}")

    def cost(name: str) -> float:
        return ns[name] - ns["pass"]

    print("PFQ's cost over pass / AF_PACKET's (lower is better):")
    print(f"  1 reader:               {cost('tap_1_endpoint') / cost('af_packet_1'):.2f}")
    print(f"  4 fanned-out readers:   {cost('tap_4_hash') / cost('af_packet_4_hash'):.2f}")
    print(f"PFQ capture, 4 hash vs AF_PACKET 4 fan-out hash: "
          f"{ns['af_packet_4_hash'] / ns['capture_4_hash']:.2f}x the frame rate")
    print(f"steering to 4 + BPF over 1 endpoint: "
          f"{ns['tap_4_hash_bpf'] - ns['tap_1_endpoint']:+.1f} ns/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
