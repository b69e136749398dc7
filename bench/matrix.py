#!/usr/bin/env python3
"""Benchmark: `pfq-omatic matrix` against the same cells as plain serial Kbuild runs.

Usage: bench/matrix.py [--driver D]... [--kernel K]... [--jobs 2]

In one run, for every driver on every kernel (default: 6 drivers x 4 kernels, one of them
in a system of another suite): first the floor, a plain Kbuild of each vanilla driver,
one after another (`make -C <headers> M=<its staged sources> -jN <CONFIG>=m modules`, in
the kernel's own system where it lives there); then `pfq-omatic matrix --force` of the
same cells (rewrite, Kbuild against pfq.ko, verify, reports; cells in parallel); then the
same matrix again with nothing changed. Caches are warm for both sides: the source
tarballs are read and pfq.ko is built for each kernel before timing. Prints the matrix's
time as a ratio of the floor (target <= 1.10) and the unchanged rerun (target < 5 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from build import plain_kbuild  # bench/build.py, beside this script

from omatic.build.pipeline import ensure_kmod
from omatic.cli import _matrix_kernels

DRIVERS = ("e1000e", "e1000", "e100", "igb", "ixgbe", "virtio_net")
KERNELS = ("5.10", "6.1", "6.12", "7.2")


def matrix(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "omatic", "matrix", *argv], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", action="append")
    parser.add_argument("--kernel", action="append")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    drivers = args.driver or list(DRIVERS)
    kernels = _matrix_kernels(args.kernel or list(KERNELS))
    for kernel in kernels:  # warm: pfq.ko built, every driver's sources read once
        ensure_kmod(kernel, args.jobs)
    with tempfile.TemporaryDirectory(prefix="omatic-bench-matrix-") as tmp:
        floor = 0.0
        for kernel in kernels:
            for driver in drivers:
                floor += plain_kbuild(kernel, driver, args.jobs, Path(tmp) / "plain")
        cells = [a for d in drivers for a in ("--driver", d)] + \
            [a for k in kernels for a in ("--kernel", k.release)] + \
            ["--out", str(Path(tmp) / "m")]
        ours = matrix([*cells, "--force"])
        unchanged = matrix(cells)
    print(f"{len(drivers)} drivers x {len(kernels)} kernels "
          f"({', '.join(k.release for k in kernels)}), -j{args.jobs}")
    print(f"floor, plain serial Kbuild of every cell: {floor:.1f} s")
    print(f"pfq-omatic matrix --force: {ours:.1f} s = {ours / floor:.2f}x the floor "
          "(target <= 1.10x)")
    print(f"pfq-omatic matrix, nothing changed: {unchanged:.2f} s (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
