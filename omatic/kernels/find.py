"""Where a kernel is found for a name: a release ("6.1.0-56-amd64"), a series ("6.12") or
a Kbuild output folder; installed on this machine, kept in a Debian system made for an
earlier build, or (on request) any kernel Debian's archive offers, in a system made for it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omatic.errors import PathError, UserError
from omatic.kernels import archive as debian_archive
from omatic.kernels.archive import ArchiveKernel
from omatic.kernels.kernel import MODULES_ROOT, SRC_ROOT, Kernel
from omatic.kernels.system import roots_dir, systems_dir
from omatic.versions import version_key

_UTS_RELEASE = re.compile(r'#define UTS_RELEASE "([^"]+)"')


class NoHeadersError(PathError):
    template = ("no kernel headers for {release}; install the Debian package "
                "linux-headers-{release} (or name another kernel: pfq-omatic kernels)")


def _release_of(build_dir: Path) -> str | None:
    try:
        text = (build_dir / "include/generated/utsrelease.h").read_text(encoding="utf-8")
    except OSError:
        return None
    match = _UTS_RELEASE.search(text)
    return match[1] if match else None


def kernel_at(build_dir: Path) -> Kernel | None:
    """The kernel whose Kbuild output tree is `build_dir`, or None if it is not one."""
    release = _release_of(build_dir)
    return None if release is None else Kernel(release=release, build_dir=build_dir.resolve())


def installed_kernels() -> list[Kernel]:
    """Every kernel with headers, newest first, each once."""
    found: dict[str, Kernel] = {}
    candidates = [*sorted(MODULES_ROOT.glob("*/build")),
                  *sorted(SRC_ROOT.glob("linux-headers-*"))]
    for build_dir in candidates:
        kernel = kernel_at(build_dir)
        if kernel is not None and kernel.release not in found:
            found[kernel.release] = kernel
    return sorted(found.values(), key=lambda k: version_key(k.release), reverse=True)


def find_kernel(spec: str | Path, archive: bool = True, note: Any = None) -> Kernel:
    """A kernel from its release ("6.1.0-56-amd64"), a series ("6.12") or a build dir:
    installed here, else (with `archive`) any kernel Debian's archive offers, in a kept
    system of its suite, made on first use."""
    path = Path(spec)
    if path.is_dir():
        kernel = kernel_at(path)
        if kernel is None:
            raise PathError("not a kernel build directory (include/generated/utsrelease.h "
                            "is missing); install linux-headers for that release", path=path)
        return kernel
    kernels = installed_kernels()
    for kernel in kernels:
        if kernel.release == str(spec):
            return kernel
    series = [k for k in kernels if k.series == str(spec)]
    if series:
        return series[0]
    for kernel in kept_kernels():
        if kernel.release == str(spec):
            return kernel
    if not archive:
        raise NoHeadersError(release=str(spec))
    return debian_archive.system_kernel(
        debian_archive.find_available(str(spec), debian_archive.available_kernels()), note=note)


def kept_kernels() -> list[Kernel]:
    """The kernels of the kept systems made for earlier builds (omatic.kernels.system.ensure_root),
    named SUITE-KEY-DATE, whose packages are still all a kernel's system needs (a system
    made before a package was added to the list is not used)."""
    found = []
    for root in sorted(roots_dir().glob("*-*-*")):
        suite = root.name.split("-")[0]
        try:
            meta = json.loads((systems_dir() / f"{root.name}.json").read_text())
            has = {p.partition("/")[0] for p in meta["packages"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for build_dir in sorted(root.glob("usr/src/linux-headers-*")):
            release = _release_of(build_dir)
            if release is None or not (build_dir / "Module.symvers").is_file():
                continue
            needs = {p.partition("/")[0] for p in ArchiveKernel(release, suite, suite).packages()}
            if needs <= has:
                found.append(Kernel(release=release, build_dir=build_dir, root=root,
                                    suite=suite))
    return found


def default_kernel() -> Kernel:
    """The running kernel when its headers are installed, else the newest installed."""
    running = os.uname().release
    kernels = installed_kernels()
    for kernel in kernels:
        if kernel.release == running:
            return kernel
    if not kernels:
        raise UserError("no kernel headers installed; install linux-headers-amd64 "
                        "(Debian) or the headers of the kernel to build for")
    return kernels[0]


def find_or_offered(specs: Sequence[str], offered: Sequence[ArchiveKernel] | None = None
                    ) -> list[Kernel | ArchiveKernel]:
    """Each name, in order, as a kernel here (installed or kept) when there is one, else
    as the archive offers it (`offered`, read from the archive's indexes when needed and
    not given): nothing is made."""
    found: list[Kernel | ArchiveKernel] = []
    for spec in specs:
        try:
            found.append(find_kernel(spec, archive=False))
        except NoHeadersError:
            offered = offered if offered is not None else debian_archive.available_kernels()
            found.append(debian_archive.find_available(spec, offered))
    return found

