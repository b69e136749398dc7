#!/usr/bin/env python3
"""Benchmark: what DKMS takes for the accelerated package, against the same drivers unmodified.

Usage: bench/dkms.py [--driver D]...   (default: e1000e e1000 virtio_net)

In one run, in one disposable Debian 12 system holding dkms and the 6.1 and 6.12 kernels
(the lifecycle test's): for each kernel, `dkms build` + `dkms install` of
  - vanilla: a DKMS package of the drivers' own sources (the same tree, unrewritten, no
    pfq.ko, no checks), then
  - pfq-omatic: `pfq-omatic dkms` of the same drivers (pfq.ko too, the post-build and
    pre-install checks),
and then the pre-install check alone (the verify step), run again on what DKMS built.
Prints pfq-omatic's time as a ratio of vanilla's, and the check's share of pfq-omatic's
time (target < 5%).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from omatic import __version__
from omatic.build.dkms import PACKAGE, TARGET_SYSTEM, DkmsTree, write_tree
from omatic.build.source import stage_from_tarball
from omatic.kernels.find import find_kernel
from omatic.kernels.system import Bind, SystemSpec, ensure_system, run_in_system

DRIVERS = ("e1000e", "e1000", "virtio_net")
VANILLA = "pfq-vanilla"

# Run in the system: each package added, then built and installed per kernel, timed.
SCRIPT = r"""
set -eu
trap 'echo "bench/dkms.py: failed in the system: $BASH_COMMAND" >&2' ERR
now() { date +%s%N; }
for tree in /trees/*/; do
    name=$(basename "$tree"); package=${name%-*}; version=${name##*-}
    cp -a "$tree" "/usr/src/$name"
    dkms add -m "$package" -v "$version" > /dev/null
    for k in $(ls /lib/modules); do
        start=$(now)
        dkms build -m "$package" -v "$version" -k "$k" > /dev/null
        # dkms 3.0.10 will not replace an in-tree module by one of the same version (none):
        # the vanilla install stops there, which only makes vanilla's time shorter.
        dkms install -m "$package" -v "$version" -k "$k" > /dev/null \
            || [ "$package" = @VANILLA@ ]
        echo "$package $k $(($(now) - start))" >> /out/times
    done
done
for k in $(ls /lib/modules); do
    base=/var/lib/dkms/@PACKAGE@/@VERSION@/$k/x86_64
    start=$(now)
    /usr/src/@PACKAGE@-@VERSION@/pfq-omatic-check pre-install "$k" "$base" > /dev/null
    echo "checks $k $(($(now) - start))" >> /out/times
done
"""


def vanilla_tree(tree: DkmsTree, dest: Path, work: Path) -> Path:
    """The same DKMS tree with the drivers' original sources, without pfq.ko nor checks."""
    shutil.copytree(tree.path, dest, ignore=shutil.ignore_patterns("pfq", "check",
                                                                   "pfq-omatic-check"))
    for series in tree.series:
        tarball = series.kernel.source_tarball
        assert tarball is not None
        for driver in tree.drivers:
            staged = stage_from_tarball(tarball, driver, work / series.name / driver)
            for rel in staged.files:
                if rel.endswith((".c", ".h")):
                    shutil.copy2(staged.root / rel, dest / "series" / series.name / rel)
    kbuild = dest / "Kbuild"
    kbuild.write_text(kbuild.read_text().replace("obj-m += pfq/\n", ""))
    conf = dest / "dkms.conf"
    text = conf.read_text().replace(f'PACKAGE_NAME="{PACKAGE}"', f'PACKAGE_NAME="{VANILLA}"')
    lines = [line for line in text.splitlines()
             if not re.match(r"\s*(POST_BUILD|PRE_INSTALL)=|\s*\w+_MODULE_\w+\[0\]=", line)]
    # pfq was module 0: the drivers move down one. And with no pfq, a kernel of no series
    # (dkms add reads this file for the running one) must still name a module.
    text = re.sub(r"(_MODULE_\w+)\[(\d+)\]", lambda m: f"{m[1]}[{int(m[2]) - 1}]",
                  "\n".join(lines) + "\n")
    last = tree.series[-1].name
    text = text.replace(f"\n{last})\n", f"\n{last} | *)\n")
    conf.write_text(text)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", action="append")
    args = parser.parse_args()
    drivers = args.driver or list(DRIVERS)
    kernels = [find_kernel(series) for series in ("6.1", "6.12")]
    tarball, _ = ensure_system(SystemSpec.of("bookworm", TARGET_SYSTEM))
    with tempfile.TemporaryDirectory(prefix="omatic-bench-dkms-") as tmp:
        trees, out = Path(tmp) / "trees", Path(tmp) / "out"
        out.mkdir()
        tree = write_tree(drivers, kernels, trees / f"{PACKAGE}-{__version__}")
        vanilla_tree(tree, trees / f"{VANILLA}-{tree.version}", Path(tmp) / "stage")
        script = Path(tmp) / "bench.sh"
        script.write_text(SCRIPT.replace("@PACKAGE@", PACKAGE).replace("@VANILLA@", VANILLA)
                          .replace("@VERSION@", tree.version))
        code = run_in_system(tarball, "bookworm", ["bash", "/b/bench.sh"],
                             binds=[Bind(trees, "/trees"), Bind(script.parent, "/b"),
                                    Bind(out, "/out")])
        if code != 0:
            print(f"bench/dkms.py: the run in the system failed (exit {code})", file=sys.stderr)
            return 1
        times: dict[tuple[str, str], float] = {}
        for line in (out / "times").read_text().splitlines():
            what, kernel, nanoseconds = line.split()
            times[what, kernel] = int(nanoseconds) / 1e9
    print(f"drivers: {' '.join(drivers)}")
    print(f"{'kernel':24} {'vanilla s':>10} {'pfq-omatic s':>13} {'ratio':>6} "
          f"{'checks s':>9} {'share':>6}")
    for kernel in kernels:
        k = kernel.release
        vanilla, ours, checks = times[VANILLA, k], times[PACKAGE, k], times["checks", k]
        print(f"{k:24} {vanilla:10.1f} {ours:13.1f} {ours / vanilla:5.2f}x "
              f"{checks:9.2f} {checks / ours:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
