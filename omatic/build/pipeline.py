"""From a driver name to a verified accelerated module: source, rewrite, kbuild, verify.

`build_driver` runs the pipeline for one driver and one kernel and writes
`OUT/<release>/<driver>/` (the .ko files, omatic.patch, report.json, build.log) in one
rename, or nothing. Its inputs (staged sources, rules, PFQ module, kernel, tool version)
are hashed; when an earlier output has the same hash it is returned as it is. The PFQ
module for a kernel is built once and cached. A lock per output keeps two builds of the
same driver and kernel from racing: the second waits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omatic import __version__
from omatic.build.kbuild import KmodBuild, build_kmod
from omatic.build.source import (
    DriverSource,
    TarballCache,
    lookup,
    stage_from_dir,
    stage_from_tarball,
    stage_from_tree,
)
from omatic.build.tree import patch_tree
from omatic.cache import cache_root, file_lock, made_dirs
from omatic.data import KMOD_DIR, PATCHES_DIR
from omatic.errors import BuildError, InfraError, OutputError, PathError, UserError
from omatic.kernels.kernel import Kernel
from omatic.progress import Step, quiet_step
from omatic.rules import load_rules

_COMPILER_ERROR = re.compile(r"^(?P<path>[^\s:]+):(?P<line>\d+):(?P<col>\d+): (?:fatal )?error: ",
                             re.MULTILINE)


class NotConfiguredError(UserError):
    """The kernel's .config leaves the driver out: what it needs may be left out with it
    (the cloud flavor has no I2C for igb, for one), so there is nothing to build against."""

    template = ("{kernel} does not build {driver}: {config} is not set in its .config; "
                "choose a kernel whose config has it (the amd64 flavor has most drivers)")


@dataclass
class BuildRequest:
    """What to build."""

    #: Module name ("e1000e"); with `source_dir`, the name to give the out-of-tree driver.
    driver: str
    kernel: Kernel
    #: Root of the outputs: OUT/<release>/<driver>/.
    out_root: Path = Path("out")
    jobs: int = os.cpu_count() or 1
    #: Take the driver from an unpacked kernel tree instead of Debian's tarball.
    kernel_tree: Path | None = None
    #: Take an out-of-tree driver from this directory.
    source_dir: Path | None = None
    #: Rebuild even when the output is up to date.
    force: bool = False
    #: Build the driver as it is, without rewriting it: does it build out of tree at all?
    #: (A matrix asks when the accelerated build failed.) Output: OUT/<release>/<driver>.vanilla.
    vanilla: bool = False

    @property
    def out_dir(self) -> Path:
        name = f"{self.driver}.vanilla" if self.vanilla else self.driver
        return self.out_root / self.kernel.release / name


@dataclass
class BuildResult:
    out_dir: Path
    report: dict[str, Any]
    #: True when an earlier output was still valid and nothing was rebuilt.
    up_to_date: bool
    modules: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.report.get("verify", {}).get("ok"))


def _run_make(cmd: Sequence[str], log: Path) -> int:
    try:
        with open(log, "w") as out:
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                  check=False).returncode
    except FileNotFoundError:
        raise InfraError("make is not installed; run `make setup`") from None


def hash_files(h: Any, root: Path, pattern: str = "**/*") -> None:
    for path in sorted(root.glob(pattern)):
        if path.is_file() and not path.name.endswith((".o", ".ko", ".cmd", ".pyc")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes())


def kmod_key(kernel: Kernel) -> str:
    """What a built pfq.ko depends on: its sources and the kernel's ABI."""
    h = hashlib.sha256(__version__.encode())
    hash_files(h, KMOD_DIR)
    h.update(kernel.release.encode())
    for name in (".config", "Module.symvers", "include/generated/utsrelease.h"):
        path = kernel.build_dir / name
        h.update(path.read_bytes() if path.is_file() else b"-")
    return h.hexdigest()[:20]


def kmod_dir(kernel: Kernel) -> Path:
    """Where the cache keeps pfq.ko for `kernel`: named by release and kmod_key."""
    return cache_root() / "kmod" / f"{kernel.release}-{kmod_key(kernel)}"


def ensure_kmod(kernel: Kernel, jobs: int, final: Path | None = None) -> KmodBuild:
    """pfq.ko for `kernel`, built once and kept in the cache (at `final`, when the caller
    already has kmod_dir(kernel))."""
    final = final or kmod_dir(kernel)
    with file_lock(final.with_suffix(".lock"), f"waiting for another build of pfq.ko "
                                                f"for {kernel.release}"):
        if (final / "pfq.ko").is_file() and (final / "Module.symvers").is_file():
            log = (final / "build.log").read_text() if (final / "build.log").exists() else ""
            return KmodBuild(kernel=kernel, dir=final, log=log, seconds=0.0)
        tmp = Path(tempfile.mkdtemp(prefix=".kmod-", dir=final.parent))
        try:
            build = build_kmod(kernel, tmp / "pfq", jobs=jobs)
            (tmp / "pfq" / "build.log").write_text(build.log)
            if final.exists():
                shutil.rmtree(final)
            (tmp / "pfq").rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return KmodBuild(kernel=kernel, dir=final, log=build.log, seconds=build.seconds)


def _stage(req: BuildRequest, dest: Path) -> DriverSource:
    if req.source_dir is not None:
        return stage_from_dir(req.source_dir, req.driver, dest)
    if req.kernel_tree is not None:
        return stage_from_tree(req.kernel_tree, req.driver, dest)
    return stage_from_tarball(kernel_tarball(req.kernel, ", or pass --kernel-tree or --source"),
                              req.driver, dest)


def kernel_tarball(kernel: Kernel, hint: str = "") -> Path:
    """Debian's linux-source tarball of `kernel`'s series; PathError if not installed."""
    tarball = kernel.source_tarball
    if tarball is None:
        raise PathError(f"no source tarball for kernel {kernel.release}; install the Debian "
                        f"package linux-source-{kernel.series}{hint}",
                        path=f"/usr/src/linux-source-{kernel.series}.tar.xz")
    return tarball


def build_key(source: DriverSource, kmod: Path, vanilla: bool = False) -> str:
    """The hash of every input of a driver build; `kmod` is kmod_dir() of its kernel,
    whose name carries the PFQ module's and the kernel's hash."""
    h = hashlib.sha256(__version__.encode() + (b"\0vanilla" if vanilla else b""))
    h.update(source.digest().encode())
    hash_files(h, PATCHES_DIR, "*.toml")
    h.update(kmod.name.encode())
    return h.hexdigest()


def _map_errors(log: str, accel: Path, report: dict[str, Any], src: Path) -> list[str]:
    """The compiler's error lines; for a rewritten file, with the original line beside."""
    shifts: dict[str, list[int]] = {}  # file -> original lines where lines were inserted
    for f in report.get("files", []):
        data = (src / f["file"]).read_bytes() if (src / f["file"]).is_file() else b""
        for e in f["edits"]:
            if e["start"] == e["end"]:
                at = data.count(b"\n", 0, e["start"]) + 1
                shifts.setdefault(f["file"], []).extend([at] * e["new"].count("\n"))
    out = []
    for line in log.splitlines():
        match = _COMPILER_ERROR.match(line)
        if not match:
            continue
        path = Path(match["path"])
        try:
            rel = (path if path.is_absolute() else accel / path).resolve().relative_to(
                accel.resolve()).as_posix()
        except ValueError:
            out.append(line)
            continue
        if rel in shifts or any(f["file"] == rel for f in report.get("files", [])):
            number = int(match["line"])
            inserted = sum(1 for at in shifts.get(rel, []) if at < number)
            original = number - inserted
            text = (src / rel).read_bytes().split(b"\n")[original - 1].decode(errors="replace")
            out.append(f"{line}\n    (rewritten file {rel}; original line {original}: "
                       f"{text.strip()})")
        else:
            out.append(line)
    return out


def _write_output(out_dir: Path, staged: Path) -> None:
    """Put `staged` at `out_dir` in one rename; an older output goes only after."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    staged.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


class WrongSourceError(UserError):
    template = ("{path} builds {built}, not {driver}: point --source at the folder of "
                "{driver}'s Makefile, or build {first}")


def _check_builds_the_driver(req: BuildRequest, kos: Sequence[Path]) -> None:
    """A folder given with --source (or --kernel-tree) must build the module asked for:
    one that builds others would be reported, verified and written as that driver."""
    built = [ko.name.removesuffix(".ko") for ko in kos]
    wanted = req.driver.replace("-", "_")
    if any(name.replace("-", "_") == wanted for name in built):
        return
    where = req.source_dir or req.kernel_tree or req.kernel.release
    raise WrongSourceError(path=where, built=", ".join(built), driver=req.driver,
                           first=built[0])


def _final_paths(verify: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The verification's report with each module's path where the module ends up, not
    in the temporary folder it was verified in (gone after the rename)."""
    for module in verify.get("modules", []):
        module["path"] = str(out_dir / Path(module["path"]).name)
    return verify


def dry_run_commands(req: BuildRequest) -> list[str]:
    """The commands a build would run, as shell lines (nothing is run)."""
    kmod = kmod_dir(req.kernel)
    work = req.out_dir.parent / f".build-{req.driver}-XXXX"
    driver_dir, config = work / "accel" / "DRIVER_DIR", "CONFIG_DRIVER"
    include_dirs: list[str] = []
    cmds = []
    tarball = req.kernel.source_tarball
    if req.source_dir is not None:
        driver_dir, config = work / "accel" / "driver", ""
    elif req.kernel_tree is None and tarball is not None:
        cache = TarballCache(tarball)
        if cache.extracted:
            module = lookup(cache.index(), req.driver, tarball.name)
            driver_dir, config = work / "accel" / module.dir, module.config
            include_dirs = module.include_dirs()
        else:
            cmds.append(shlex.join(["xz", "-dc", str(tarball)]) + " | (extract drivers/net "
                        f"and the Kbuild files of drivers/ into {cache.tree})")
    if not (kmod / "pfq.ko").is_file():
        cmds.append(shlex.join(req.kernel.kbuild_argv(kmod, [f"-j{req.jobs}", "W=1",
                                                             "modules"])))
    cmds.append(shlex.join(_driver_make(req, kmod, driver_dir, config, work / "accel",
                                        include_dirs)))
    return cmds


def _driver_make(req: BuildRequest, kmod: Path, driver_dir: Path, config: str,
                 tree: Path | None = None, include_dirs: Sequence[str] = ()) -> list[str]:
    """The make command for the driver. `tree` is the staged tree's root: trace headers
    name themselves relative to include/trace/ of the kernel sources
    (TRACE_INCLUDE_PATH ../../drivers/...), which the headers package lacks, so the
    staged tree's own include/trace/ is searched too, and so are the folders the driver's
    Makefile adds under $(srctree) (`include_dirs`, kernel-relative)."""
    kmod = kmod.absolute()
    kcflags = f"-I{kmod / 'include'}"
    if tree is not None:
        kcflags += f" -I{tree.absolute() / 'include' / 'trace'}"
        kcflags += "".join(f" -I{tree.absolute() / d}" for d in include_dirs)
    args = [f"-j{req.jobs}", f"KBUILD_EXTRA_SYMBOLS={kmod / 'Module.symvers'}",
            f"KCFLAGS={kcflags}"]
    if config:
        args.append(f"{config}=m")
    uses = [kmod] if tree is None else [kmod, tree.absolute()]
    return req.kernel.kbuild_argv(driver_dir, [*args, "modules"], uses)


def build_driver(req: BuildRequest, step: Step = quiet_step) -> BuildResult:
    """Build, verify and write one accelerated driver; see the module docstring."""
    from omatic.verify.checks import verify_modules

    rules = load_rules()
    out_dir = req.out_dir
    # A run that fails before writing its output leaves no folder it made (nor a lock).
    parents = contextlib.ExitStack()
    try:
        parents.enter_context(made_dirs(out_dir.parent))
    except OSError as err:
        raise OutputError(err.strerror or str(err), path=out_dir.parent) from None
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.monotonic()
        with step(name):
            yield
        timings[name] = round(time.monotonic() - start, 3)

    with parents, file_lock(out_dir.parent / f".{req.driver}.lock",
                            f"waiting for another build of {req.driver} for "
                            f"{req.kernel.release}"):
        try:
            work = Path(tempfile.mkdtemp(prefix=f".build-{req.driver}-", dir=out_dir.parent))
        except OSError as err:
            raise OutputError(err.strerror or str(err), path=out_dir.parent) from None
        try:
            with timed("source"):
                source = _stage(req, work / "src")
                from_kernel = req.source_dir is None and req.kernel_tree is None
                configured = req.kernel.config()
                if (from_kernel and source.config
                        and all(configured.get(c) not in ("y", "m")
                                for c in source.configs or (source.config,))):
                    raise NotConfiguredError(kernel=req.kernel.release, driver=req.driver,
                                             config=source.config)
                kmod_cache = kmod_dir(req.kernel)
                key = build_key(source, kmod_cache, req.vanilla)
            previous = out_dir / "report.json"
            if not req.force and previous.is_file():
                with contextlib.suppress(ValueError, OSError):
                    old = json.loads(previous.read_text())
                    if old.get("key") == key and old.get("verify", {}).get("ok"):
                        return BuildResult(out_dir=out_dir, report=old, up_to_date=True,
                                           modules=sorted(out_dir.glob("*.ko")))
            with timed("kmod"):
                kmod = ensure_kmod(req.kernel, req.jobs, kmod_cache)
            rewrite_json: dict[str, Any] = {"totals": {}, "sites": [], "files": []}
            if req.vanilla:
                shutil.copytree(source.root, work / "accel", symlinks=True)
            else:
                with timed("rewrite"):
                    rewrite_json = patch_tree(source.root, work / "accel", rules,
                                              jobs=req.jobs).to_json("patch")
            final = work / "final"
            final.mkdir()
            accel_dir = work / "accel" / source.dir
            (work / "accel" / "include" / "trace").mkdir(parents=True, exist_ok=True)
            with timed("kbuild"):
                code = _run_make(_driver_make(req, kmod.dir, accel_dir, source.config,
                                              work / "accel", source.include_dirs),
                                 final / "build.log")
            log = (final / "build.log").read_text(errors="replace")
            if code != 0:
                errors = _map_errors(log, work / "accel", rewrite_json, source.root)
                shown = "\n".join(errors[:10]) or "\n".join(log.splitlines()[-15:])
                raise BuildError(f"building {req.driver} for {req.kernel.release} failed "
                                 f"(make exit {code}):\n{shown}")
            kos = sorted(accel_dir.rglob("*.ko"))
            if not kos:
                raise BuildError(f"make built no .ko for {req.driver} (is {source.config} "
                                 "a tristate option?); see the build log")
            _check_builds_the_driver(req, kos)
            with timed("verify"):
                verdict = verify_modules(kos, req.kernel, kmod.symvers,
                                         rewrite_report=None if req.vanilla else rewrite_json)
            for ko in kos:
                shutil.copy2(ko, final / ko.name)
            if not req.vanilla:
                shutil.copy2(work / "accel" / "omatic.patch", final / "omatic.patch")
            report = {
                "tool": "pfq-omatic", "version": __version__, "key": key,
                "driver": req.driver, "vanilla": req.vanilla, "kernel": req.kernel.to_json(),
                "source": source.to_json(),
                "kmod": {"dir": str(kmod.dir), "symvers": str(kmod.symvers)},
                "modules": [ko.name for ko in kos],
                "rewrite": {"totals": rewrite_json["totals"], "sites": rewrite_json["sites"],
                            "files": rewrite_json["files"]},
                "verify": _final_paths(verdict.to_json(), out_dir),
                "timings": timings,
            }
            (final / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            _write_output(out_dir, final)
        except OSError as err:
            if isinstance(err, PermissionError) or err.errno in (28, 30):  # ENOSPC, EROFS
                raise OutputError(err.strerror or str(err), path=out_dir) from None
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return BuildResult(out_dir=out_dir, report=report, up_to_date=False,
                       modules=[out_dir / ko.name for ko in kos])
