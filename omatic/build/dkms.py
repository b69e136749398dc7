"""DKMS packaging: pfq.ko and accelerated drivers, rebuilt by DKMS for every kernel.

`write_tree` writes a DKMS source tree: kmod/ as `pfq/`, and for each kernel series the
rewritten sources of the chosen drivers (`series/<X.Y>/`, with `omatic.patch` and the
rewrite reports), a `Kbuild` that builds pfq.ko and every driver in one run (so the hooks'
CRCs the drivers record are pfq.ko's own), and a `dkms.conf` that picks the series of
`$kernelver`. DKMS admits only those series (BUILD_EXCLUSIVE_KERNEL); for any other
kernel it skips with exit 77 and dkms.conf names the command that would add it.

Before DKMS installs anything, its PRE_INSTALL step runs the checks of `pfq-omatic
verify` (omatic/verify/dkms_check.py, shipped in the tree with the modules it needs) on the very
files it would install: stripped, signed and compressed. A module that would fail to load
is not installed, and the failing check is printed.

`build_deb` wraps a tree into a `pfq-omatic-dkms` Debian package with debhelper's dh_dkms.
Every rewritten driver carries `MODULE_VERSION` of ours: without one, dkms 3.0.10 finds it
"equal" to the in-tree module (which has none) and silently does not install it.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omatic import __version__, imports
from omatic.build.kbuild import PRODUCTS
from omatic.build.source import DriverSource, stage_from_tarball
from omatic.build.tree import PATCH_NAME, patch_tree
from omatic.cache import made_dirs
from omatic.data import KMOD_DIR, PATCHES_DIR
from omatic.debpkg import maintainer, run_lintian
from omatic.errors import (
    InfraError,
    OmaticError,
    OutputError,
    OutputNotDirError,
    PathError,
    UserError,
)
from omatic.kernels.kernel import Kernel
from omatic.progress import Step, quiet_step
from omatic.rules import Rule, load_rules
from omatic.templates import render
from omatic.versions import version_key

#: DKMS's PACKAGE_NAME: the tree goes to /usr/src/pfq-omatic-<version>.
PACKAGE = "pfq-omatic"
#: The Debian package.
DEB_PACKAGE = f"{PACKAGE}-dkms"
#: What `modinfo -F version` says of every module of the package.
MODULE_VERSION = f"{__version__}-pfq"
#: The modules of omatic that the pre-install check needs (no tree-sitter, no jinja2).
#: A Debian 12 machine the package is for, as tests and bench/dkms.py make it: dkms, openssl
#: (DKMS makes its signing key with it), the headers and images of both kernels, and what
#: the package's check needs.
TARGET_SYSTEM = ("dkms", "openssl", "linux-headers-amd64", "linux-headers-6.12-amd64",
                 "linux-image-amd64", "linux-image-6.12-amd64", "python3-pyelftools",
                 "python3-zstandard", "python3-asn1crypto", "python3-cryptography")
#: What DKMS runs after make and before install; it ships with what it imports.
CHECK_ENTRY = "omatic.verify.dkms_check"

_LICENSE = re.compile(rb"^[ \t]*MODULE_LICENSE\s*\([^;]*\);[^\n]*\n?", re.MULTILINE)
_VERSION = re.compile(rb"^[ \t]*MODULE_VERSION\s*\([^;]*\);[^\n]*\n?", re.MULTILINE)


class DkmsError(UserError):
    template = "dkms: {message}"


@dataclass(frozen=True)
class PackagedDriver:
    """One driver of one series in the tree."""

    name: str
    #: Kernel-relative folder (drivers/net/ethernet/intel/e1000e).
    dir: str
    #: Its CONFIG_ option, set to m on the make command line.
    config: str
    #: Call sites the rewriter found and rewrote.
    sites: int
    rewritten: int
    #: The .c file that got our MODULE_VERSION.
    versioned: str
    #: Folders its Makefile adds under $(srctree) (kernel-relative), which the tree's
    #: Kbuild adds under the series instead: out of tree, $(srctree) is the headers.
    include_dirs: tuple[str, ...] = ()


@dataclass
class Series:
    """The sources of one kernel series, taken from one kernel's linux-source."""

    name: str
    #: The kernel whose source tarball gave them (the newest of the series asked for).
    kernel: Kernel
    #: Every kernel of this series that was asked for.
    kernels: list[str] = field(default_factory=list)
    drivers: list[PackagedDriver] = field(default_factory=list)

    @property
    def pattern(self) -> str:
        return re.escape(self.name)

    @property
    def rt_patched(self) -> bool:
        """True when Debian builds this series' rt flavor from sources its linux-source
        does not carry: before 6.12 took PREEMPT_RT in, that flavor adds the RT patchset
        (6.1-rt's u64_stats API is not 6.1's, and virtio_net does not compile)."""
        return tuple(int(n) for n in self.name.split(".")) < (6, 12)

    def to_json(self) -> dict[str, Any]:
        return {"series": self.name, "source_kernel": self.kernel.release,
                "kernels": self.kernels,
                "drivers": [vars(d) for d in self.drivers]}


@dataclass
class DkmsTree:
    """A written DKMS source tree (and, with build_deb, its package)."""

    path: Path
    version: str
    drivers: list[str]
    series: list[Series]
    deb: Path | None = None
    lintian: list[str] = field(default_factory=list)

    @property
    def maintainer(self) -> str:
        return maintainer()

    @property
    def exclusive(self) -> str:
        """BUILD_EXCLUSIVE_KERNEL: the releases of the series this tree has sources for."""
        return "^(" + "|".join(s.pattern for s in self.series) + r")[.-]"

    @property
    def rt_excluded(self) -> str:
        """A regex of the rt releases dkms.conf leaves out (see Series.rt_patched), or ""."""
        patterns = [s.pattern for s in self.series if s.rt_patched]
        return "^(" + "|".join(patterns) + r")[.-].*-rt-" if patterns else ""

    def to_json(self) -> dict[str, Any]:
        return {"tree": str(self.path), "package": PACKAGE, "version": self.version,
                "module_version": MODULE_VERSION, "drivers": self.drivers,
                "build_exclusive_kernel": self.exclusive,
                "series": [s.to_json() for s in self.series],
                "deb": str(self.deb) if self.deb else None, "lintian": self.lintian}


def set_module_version(driver_dir: Path, version: str) -> str:
    """Give the module built in `driver_dir` MODULE_VERSION(version): replace the one it
    has, else add one after its MODULE_LICENSE. Returns the file changed, relative to
    driver_dir."""
    sources = sorted(driver_dir.rglob("*.c"))
    line = f'MODULE_VERSION("{version}");\n'.encode()
    for path in sources:
        data = path.read_bytes()
        if _VERSION.search(data):
            path.write_bytes(_VERSION.sub(lambda _m: line, data, count=1))
            return path.relative_to(driver_dir).as_posix()
    for path in sources:
        data = path.read_bytes()
        match = _LICENSE.search(data)
        if match:
            end = match.end()
            glue = b"" if data[end - 1:end] == b"\n" else b"\n"
            path.write_bytes(data[:end] + glue + line + data[end:])
            return path.relative_to(driver_dir).as_posix()
    raise DkmsError(f"no MODULE_LICENSE in {driver_dir.name}'s sources: cannot give it a "
                    "MODULE_VERSION")


def _unified_diff(old_root: Path, new_root: Path, files: Sequence[str]) -> bytes:
    """A `patch -p1` diff of `files` between two trees (only the files that differ)."""
    out: list[bytes] = []
    for rel in files:
        old, new = old_root / rel, new_root / rel
        a = old.read_bytes() if old.is_file() else b""
        b = new.read_bytes() if new.is_file() else b""
        if a != b:
            out.extend(difflib.diff_bytes(difflib.unified_diff, a.splitlines(keepends=True),
                                          b.splitlines(keepends=True),
                                          f"a/{rel}".encode(), f"b/{rel}".encode()))
    return b"".join(line if line.endswith(b"\n") else line + b"\n\\ No newline at end of file\n"
                    for line in out)


def _merge_kbuild(existing: Path, staged: Path, driver: str) -> None:
    """Two drivers in one folder (8139cp and 8139too): their generated Kbuilds add up."""
    ours, theirs = staged.read_text(), existing.read_text()
    if "Generated by pfq-omatic" not in ours or "Generated by pfq-omatic" not in theirs:
        raise DkmsError(f"{driver} shares {existing.parent.name}/ with another driver whose "
                        "own Makefile builds it: package them separately")
    existing.write_text(theirs + ours)


def _add_driver(series: Series, name: str, tree: Path, work: Path, rules: list[Rule],
                jobs: int) -> None:
    tarball = series.kernel.source_tarball
    if tarball is None:
        raise PathError(f"no source tarball for {series.kernel.release}; install the Debian "
                        f"package linux-source-{series.name}",
                        path=f"/usr/src/linux-source-{series.name}.tar.xz")
    vanilla = work / f"vanilla-{series.name}-{name}"
    source: DriverSource = stage_from_tarball(tarball, name, vanilla)
    accel = work / f"accel-{series.name}-{name}"
    report = patch_tree(source.root, accel, rules, jobs=jobs).to_json("patch")
    versioned = set_module_version(accel / source.dir, MODULE_VERSION)
    dest = tree / "series" / series.name
    for rel in source.files:
        target = dest / rel
        if target.name == "Kbuild" and target.exists():
            _merge_kbuild(target, accel / rel, name)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(accel / rel, target)
    with open(dest / PATCH_NAME, "ab") as patch:
        patch.write(_unified_diff(source.root, accel, source.files))
    reports = dest / "reports"
    reports.mkdir(exist_ok=True)
    (reports / f"{name}.json").write_text(json.dumps(
        {"driver": name, "kernel": series.kernel.release, "sites": report["sites"],
         "totals": report["totals"]}, indent=1) + "\n")
    rewritten = report["totals"]["by_action"].get("rewrite", 0)
    series.drivers.append(PackagedDriver(name=name, dir=source.dir, config=source.config,
                                         sites=report["totals"]["sites"],
                                         rewritten=rewritten,
                                         versioned=f"{source.dir}/{versioned}",
                                         include_dirs=source.include_dirs))


def group_series(kernels: Sequence[Kernel]) -> list[Series]:
    """One Series per kernel series; its sources come from the newest kernel of it."""
    by_name: dict[str, list[Kernel]] = {}
    for kernel in kernels:
        by_name.setdefault(kernel.series, []).append(kernel)
    out = []
    for name, members in sorted(by_name.items(), key=lambda item: version_key(item[0])):
        newest = max(members, key=lambda k: version_key(k.release))
        out.append(Series(name=name, kernel=newest,
                          kernels=sorted({k.release for k in members}, key=version_key)))
    return out


def _copy_check(tree: Path) -> None:
    """The pre-install check and what it imports, and the rules it reads."""
    for rel in imports.files(imports.reach([CHECK_ENTRY])):
        dest = tree / "check" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(imports.PACKAGE_DIR.parent / rel, dest)
    shutil.copytree(PATCHES_DIR, tree / "check" / "patches",
                    ignore=shutil.ignore_patterns("*~", ".*"))
    script = tree / "pfq-omatic-check"
    script.write_text(render("dkms-check.py.j2", version=__version__))
    script.chmod(0o755)


def write_tree(drivers: Sequence[str], kernels: Sequence[Kernel], out: Path, *,
               command: str = "", jobs: int = os.cpu_count() or 1,
               step: Step = quiet_step) -> DkmsTree:
    """Write the DKMS tree of `drivers` for the series of `kernels` at `out` (which must
    not exist), in one rename."""
    if not drivers:
        raise DkmsError("name at least one driver")
    if not kernels:
        raise DkmsError("no kernel to take sources for: install linux-headers-amd64 or pass "
                        "--kernel")
    if out.exists():
        raise DkmsError(f"{out} exists; remove it or choose another --out")
    if out.parent.exists() and not out.parent.is_dir():
        raise OutputNotDirError(path=out.parent)
    series = group_series(kernels)
    rules = load_rules()
    # A run that fails leaves neither the folders it made nor its temporary one.
    parents = contextlib.ExitStack()
    try:
        parents.enter_context(made_dirs(out.parent))
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as err:
        parents.close()
        # A read-only or full disk, a file where a folder goes: the user's to fix.
        raise OutputError.of(err, out.parent) from None
    with parents:
        try:
            tree = work / "tree"
            tree.mkdir()
            with step("kmod"):
                shutil.copytree(KMOD_DIR, tree / "pfq",
                                ignore=shutil.ignore_patterns(*PRODUCTS))
                set_module_version(tree / "pfq", MODULE_VERSION)
            for s in series:
                (tree / "series" / s.name / "include" / "trace").mkdir(parents=True)
                (tree / "series" / s.name / "include" / "trace" / "README").write_text(
                    render("dkms-trace-readme.j2"))
                for name in drivers:
                    with step(f"{name} {s.name}"):
                        _add_driver(s, name, tree, work, rules, jobs)
            result = DkmsTree(path=out, version=__version__, drivers=list(drivers),
                              series=series)
            _copy_check(tree)
            context = {"tree": result, "package": PACKAGE, "module_version": MODULE_VERSION,
                       "command": command,
                       "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
            for template, name in (("dkms.conf.j2", "dkms.conf"),
                                   ("dkms-Kbuild.j2", "Kbuild"),
                                   ("dkms-Makefile.j2", "Makefile")):
                (tree / name).write_text(render(template, **context))
            (tree / "pfq-omatic-dkms.json").write_text(
                json.dumps({**result.to_json(), "tree": None, "command": command},
                           indent=1) + "\n")
            tree.rename(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _run(cmd: Sequence[str], cwd: Path, log: Path) -> int:
    try:
        with open(log, "ab") as sink:
            sink.write(f"$ {' '.join(cmd)}\n".encode())
            sink.flush()
            return subprocess.run(cmd, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                  check=False).returncode
    except FileNotFoundError:
        raise InfraError(f"{cmd[0]} is not installed; run `make setup` (it installs "
                         "debhelper, dh-dkms and lintian)") from None


def build_deb(tree: DkmsTree, out_dir: Path, *, lintian: bool = True) -> DkmsTree:
    """Package `tree` as `pfq-omatic-dkms_<version>_all.deb` in `out_dir` with
    dpkg-buildpackage and dh_dkms; run lintian on it (its error lines fail)."""
    for tool in ("dpkg-buildpackage", "dh", "dh_dkms"):
        if shutil.which(tool) is None:
            raise InfraError(f"{tool} is not installed; run `make setup` (it installs "
                             "debhelper and dh-dkms)")
    deb_name = f"{DEB_PACKAGE}_{tree.version}_all.deb"
    final = out_dir / deb_name
    with made_dirs(out_dir):
        work = Path(tempfile.mkdtemp(prefix=".deb-", dir=out_dir))
        try:
            src = work / f"{DEB_PACKAGE}-{tree.version}"
            shutil.copytree(tree.path, src / "src", symlinks=True)
            debian = src / "debian"
            (debian / "source").mkdir(parents=True)
            now = datetime.now(UTC)
            context = {"tree": tree, "package": PACKAGE, "deb_package": DEB_PACKAGE,
                       "date": now.strftime("%a, %d %b %Y %H:%M:%S +0000"),
                       "year": now.year}
            for template, name, mode in (
                    ("debian/control.j2", "control", 0o644),
                    ("debian/rules.j2", "rules", 0o755),
                    ("debian/changelog.j2", "changelog", 0o644),
                    ("debian/copyright.j2", "copyright", 0o644),
                    ("debian/install.j2", f"{DEB_PACKAGE}.install", 0o644),
                    ("debian/dkms.j2", f"{DEB_PACKAGE}.dkms", 0o644),
                    ("debian/format.j2", "source/format", 0o644)):
                path = debian / name
                path.write_text(render(template, **context))
                path.chmod(mode)
            log = work / "dpkg-buildpackage.log"
            code = _run(["dpkg-buildpackage", "-us", "-uc", "-b"], src, log)
            built = work / deb_name
            if code != 0 or not built.is_file():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise OmaticError(f"dpkg-buildpackage failed (exit {code}):\n{tail}")
            if lintian:
                tree.lintian = run_lintian(built)
                errors = [line for line in tree.lintian if line.startswith("E:")]
                if errors:
                    raise OmaticError("lintian reports errors:\n" + "\n".join(errors))
            built.rename(final)
            tree.deb = final
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tree
