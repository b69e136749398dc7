"""Run Kbuild: build the PFQ module (kmod/) against one kernel's headers, and check it.

`build_kmod` copies kmod/ into an output folder and runs
`make -C <kernel build dir> M=<that folder> modules` there, so the checkout stays clean
and two kernels can build side by side. `check_kmod` then reads the result with
omatic.verify.modfile and lists every way it breaks the contract with the rewrite rules: the
hooks pfq.ko exports are exactly those the rules name for that kernel, GPL-only, with
the CRCs Module.symvers gives them, and the vermagic of that kernel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omatic.data import KMOD_DIR
from omatic.errors import BuildError, InfraError, OutputExistsError
from omatic.kernels.find import find_kernel
from omatic.kernels.kernel import Kernel
from omatic.kernels.symvers import read_symvers
from omatic.rules import Rule
from omatic.verify.modfile import KernelModule

#: Build products Kbuild leaves in kmod/ when someone builds in place; never copied.
PRODUCTS = ("*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "Module.symvers", "modules.order",
            ".tmp_*", ".module-common.o")
#: A compiler or modpost diagnostic that W=1 must not produce.
_WARNING = re.compile(r"(: warning: |^WARNING: )", re.MULTILINE)


@dataclass(frozen=True)
class KmodBuild:
    #: The kernel built against.
    kernel: Kernel
    #: Folder holding the copied sources and the products (pfq.ko, Module.symvers).
    dir: Path
    #: make's output, stdout and stderr interleaved.
    log: str
    #: Wall-clock time of the make run, in seconds.
    seconds: float

    @property
    def ko(self) -> Path:
        return self.dir / "pfq.ko"

    @property
    def symvers(self) -> Path:
        return self.dir / "Module.symvers"

    def warnings(self) -> list[str]:
        """Compiler and modpost warnings in the log (there must be none at W=1)."""
        return [line for line in self.log.splitlines() if _WARNING.search(line)]


def _first_errors(log: str, limit: int = 12) -> str:
    """The compiler's own words: the first error lines, else the log's last lines."""
    lines = log.splitlines()
    errors = [line for line in lines if re.search(r"\berror\b", line, re.IGNORECASE)]
    return "\n".join(errors[:limit] if errors else lines[-limit:])


def build_kmod(kernel: Kernel | str | Path, out_dir: Path, jobs: int = 2,
               make_args: Sequence[str] = ("W=1",)) -> KmodBuild:
    """Copy kmod/ into `out_dir` (absent or empty) and build pfq.ko there.

    `kernel` is a Kernel, or what omatic.kernels.find.find_kernel accepts (a release, a series,
    a Kbuild output directory). Raises BuildError with the compiler's messages when make
    fails, InfraError without make.
    """
    found = kernel if isinstance(kernel, Kernel) else find_kernel(kernel)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputExistsError(path=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(KMOD_DIR, out_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*PRODUCTS))
    cmd = found.kbuild_argv(out_dir.resolve(), [f"-j{jobs}", *make_args, "modules"])
    start = time.monotonic()
    try:
        run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace", check=False)
    except OSError as err:
        raise InfraError(f"cannot run make: {err}") from None
    seconds = time.monotonic() - start
    if run.returncode != 0:
        raise BuildError(f"building pfq.ko for {found.release} failed "
                         f"(make exit {run.returncode}):\n{_first_errors(run.stdout)}")
    build = KmodBuild(kernel=found, dir=out_dir, log=run.stdout, seconds=seconds)
    for product in (build.ko, build.symvers):
        if not product.is_file():
            raise BuildError(f"make succeeded but {product} is missing")
    return build


def expected_hooks(rules: Iterable[Rule], release: str) -> set[str]:
    """The hooks pfq.ko must export on `release`: one per rule whose callee exists there."""
    return {rule.hook for rule in rules if rule.exists_in(release)}


def check_kmod(ko: Path, symvers: Path, release: str, vermagic: str,
               rules: Iterable[Rule],
               symbols_of: Callable[[str], Sequence[str]] = lambda callee: (callee,)
               ) -> list[str]:
    """Every way `ko` and its `symvers` break the contract for `release`; [] when none.

    The contract: exports == the rules' hooks for that release, all EXPORT_SYMBOL_GPL;
    Module.symvers lists exactly them with the CRCs the .ko carries; each hook calls the
    kernel function it stands for (the symbols `symbols_of` the callee: Kernel.callee_symbols
    where the callee is an inline); license GPL; vermagic `vermagic`.
    """
    rules = list(rules)
    module = KernelModule(ko)
    table = read_symvers(symvers)
    problems: list[str] = []
    exports = module.exports()
    want = expected_hooks(rules, release)
    if missing := sorted(want - exports.keys()):
        problems.append(f"hooks not exported: {', '.join(missing)}")
    if extra := sorted(exports.keys() - want):
        problems.append(f"exported but named by no rule for {release}: {', '.join(extra)}")
    for name, export in sorted(exports.items()):
        if not export.gpl:
            problems.append(f"{name} is not EXPORT_SYMBOL_GPL")
        entry = table.get(name)
        if entry is None:
            problems.append(f"{name} is missing from {symvers.name}")
            continue
        if entry.export != "EXPORT_SYMBOL_GPL":
            problems.append(f"{symvers.name} says {name} is {entry.export}")
        if export.crc is None:
            problems.append(f"{name} has no CRC in the module (built without modversions?)")
        elif export.crc != entry.crc:
            problems.append(f"CRC of {name}: module {export.crc:#010x}, "
                            f"{symvers.name} {entry.crc:#010x}")
    if stale := sorted(table.keys() - exports.keys()):
        problems.append(f"{symvers.name} lists symbols the module does not export: "
                        f"{', '.join(stale)}")
    needed = module.undefined()
    for rule in rules:
        if rule.exists_in(release) and not set(symbols_of(rule.callee)) & needed:
            problems.append(f"{rule.hook} does not call {rule.callee}")
    info = module.modinfo()
    if info.get("license") != ["GPL"]:
        problems.append(f"license is {info.get('license')}, expected ['GPL']")
    if info.get("vermagic") != [vermagic]:
        problems.append(f"vermagic is {info.get('vermagic')}, expected [{vermagic!r}]")
    return problems
