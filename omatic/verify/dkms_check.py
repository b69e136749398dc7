"""The checks DKMS runs on pfq-omatic's modules, shipped inside the DKMS package.

dkms.conf calls the package's `pfq-omatic-check` script at two steps:
- `post-build KERNELVER BASE`: after make, from the build folder: keep the build's
  Module.symvers (pfq.ko's exports, with their CRCs) under BASE/log/, since DKMS removes
  the build folder afterwards;
- `pre-install KERNELVER BASE`: before DKMS copies anything into /lib/modules: verify each
  module of BASE/module/ (as DKMS will install it: stripped, signed, compressed) against
  that kernel, the way `pfq-omatic verify` does. A non-zero exit makes DKMS abort the
  install ("pre_install failed, aborting install."), so a module that would not load is
  never installed; the failing checks are printed first.

Only the standard library, pyelftools, zstandard, asn1crypto and cryptography are needed
(python3-pyelftools, python3-zstandard, python3-asn1crypto, python3-cryptography), and the
omatic modules copied beside this one. A module DKMS signed is checked with its mok.pub.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from omatic.errors import OmaticError
from omatic.kernels.kernel import MODULES_ROOT, Kernel
from omatic.verify.checks import ModuleReport, verify_modules
from omatic.verify.signature import DKMS_CERT

#: Where the script lives: the package's source tree (/usr/src/pfq-omatic-VERSION), which
#: holds this file as check/omatic/verify/dkms_check.py.
TREE = Path(__file__).resolve().parents[3]
SYMVERS = "Module.symvers"


def _say(line: str) -> None:
    print(f"pfq-omatic: {line}", flush=True)


def post_build(kernelver: str, base: Path, build: Path) -> int:
    """Keep the build's Module.symvers in BASE/log/ for the pre-install check."""
    source = build / SYMVERS
    if not source.is_file():
        _say(f"no {SYMVERS} in {build} after make for {kernelver}")
        return 1
    (base / "log").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, base / "log" / SYMVERS)
    return 0


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0]


def check(kernelver: str, base: Path, tree: Path = TREE) -> tuple[bool, list[ModuleReport]]:
    """Verify every module of BASE/module/ against `kernelver`."""
    build_dir = MODULES_ROOT / kernelver / "build"
    if not (build_dir / SYMVERS).is_file():
        raise OmaticError(f"no headers for {kernelver} ({build_dir}/{SYMVERS} is missing)")
    kernel = Kernel(release=kernelver, build_dir=build_dir.resolve())
    symvers = base / "log" / SYMVERS
    if not symvers.is_file():
        raise OmaticError(f"{symvers} is missing: the post-build step did not run")
    modules = sorted(p for p in (base / "module").iterdir() if ".ko" in p.name)
    if not modules:
        raise OmaticError(f"no modules in {base / 'module'}")
    reports: list[ModuleReport] = []
    series = tree / "series" / kernel.series / "reports"
    for module in modules:
        name = _module_name(module)
        report_file = series / f"{name}.json"
        rewrite = json.loads(report_file.read_text()) if report_file.is_file() else None
        if name != "pfq" and rewrite is None:
            raise OmaticError(f"no rewrite report for {name} ({report_file})")
        # DKMS signed the module just before (when it could make its key): check that too.
        verdict = verify_modules([module], kernel, symvers, rewrite_report=rewrite,
                                 cert=DKMS_CERT if DKMS_CERT.is_file() else None)
        reports.extend(verdict.modules)
    return all(r.ok for r in reports), reports


def pre_install(kernelver: str, base: Path, tree: Path = TREE) -> int:
    ok, reports = check(kernelver, base, tree)
    names = ", ".join(r.path.name for r in reports)
    if ok:
        _say(f"verified for {kernelver}: {names} (vermagic, license, depends, hooks, "
             "entry points, symbols and CRCs, struct module)")
        return 0
    for report in reports:
        for item in report.checks:
            if item.status == "fail":
                _say(f"{report.path.name}: {item.name} check failed: "
                     + "; ".join(item.details))
    _say(f"not installing for {kernelver}: a module would fail to load; the in-tree "
         "drivers stay in use")
    return 1


def main(argv: Sequence[str]) -> int:
    usage = "usage: pfq-omatic-check post-build|pre-install KERNELVER BASE"
    if len(argv) != 3 or argv[0] not in ("post-build", "pre-install"):
        print(usage, file=sys.stderr)
        return 2
    step, kernelver, base = argv[0], argv[1], Path(argv[2])
    try:
        if step == "post-build":
            return post_build(kernelver, base, Path.cwd())
        return pre_install(kernelver, base)
    except (OmaticError, OSError, ValueError) as err:
        _say(f"{step} check for {kernelver} failed: {err}")
        return 1
