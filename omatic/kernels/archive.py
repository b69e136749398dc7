"""The kernels Debian's archive offers, read from its package indexes through apt.

apt runs with a state folder of ours per suite and sources (`$XDG_CACHE_HOME/pfq-omatic/apt/`):
its own sources.list (the suite's lines from `suites/SUITE.toml`), lists, cache and an
empty dpkg status, so the host's apt sources and state are never read or touched. The
indexes are refreshed once a day, or on demand.

A kernel is a `linux-image-RELEASE` package whose RELEASE ends in a flavor we build for
(amd64, cloud-amd64, rt-amd64), listed with the archive suite that carries it
("trixie-backports") and the suite whose system builds for it ("trixie"): that system has
the compiler the kernel was built with, and host tools linked against its own glibc.
An image can outlive the rest of its kernel in the indexes: the signed images
(`linux-signed-amd64`) linger after the `linux` source that built the headers was
superseded. A kernel is offered only when its suite also serves its headers, what they
depend on, and the `linux-source` of its series; the others are kept with what they
miss, to say so when one is asked for.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic.cache import cache_root, file_lock
from omatic.errors import InfraError, UserError
from omatic.kernels.kernel import Kernel
from omatic.kernels.system import Suite, SystemSpec, ensure_root, load_suites
from omatic.versions import version_key

FLAVORS = ("amd64", "cloud-amd64", "rt-amd64")
#: Hours the downloaded indexes serve before `apt-get update` runs again.
MAX_AGE_HOURS = 24
#: An image of a kernel release ("6.1.0-56-amd64", "6.12.117+deb12-amd64"); the
#: metapackages that track a series ("linux-image-6.1-amd64") have two numbers, no release.
_IMAGE = re.compile(r"^Package: linux-image-(\d+\.\d+\.\d+[^\s]*?-(?:cloud-|rt-)?amd64)$",
                    re.MULTILINE)
APT_HELPER = "/usr/lib/apt/apt-helper"


class ArchiveIndexError(InfraError):
    template = ("cannot read Debian's package indexes for {suite}: {message} (check the "
                "network, or set PFQ_OMATIC_MIRROR to a mirror this machine reaches)")


class UnknownKernelError(UserError):
    template = "no kernel {spec!r} in Debian's archive{hint}"


class KernelNotServedError(UserError):
    template = ("Debian's archive no longer serves all of kernel {release}: {missing} "
                "missing{hint}")


@dataclass(frozen=True)
class ArchiveKernel:
    """A kernel the archive offers."""

    #: Its UTS release, which names its packages: "7.3.4+deb13-amd64".
    release: str
    #: The archive suite carrying its image: "trixie-backports".
    archive_suite: str
    #: The suite whose system builds for it: "trixie".
    suite: str
    #: What a build needs that the suite no longer serves (headers, what they depend on,
    #: the series' linux-source): such a kernel cannot be had.
    missing: tuple[str, ...] = ()

    @property
    def flavor(self) -> str:
        return next(f for f in sorted(FLAVORS, key=len, reverse=True)
                    if self.release.endswith("-" + f))

    @property
    def series(self) -> str:
        return ".".join(re.findall(r"\d+", self.release)[:2])

    def packages(self) -> list[str]:
        """What a system building for this kernel holds, on top of its suite's minbase:
        the headers (which pull the compiler and linux-kbuild), the image with its modules,
        the source tarball of the series, make and xz; perl for W=1's kernel-doc (its
        Pod::Usage is not in perl-base)."""
        packages = [f"linux-headers-{self.release}", f"linux-image-{self.release}",
                    f"linux-source-{self.series}", "make", "xz-utils", "kmod", "perl"]
        if self.archive_suite.endswith("-backports"):
            # apt takes a dependency from backports only when told: the image needs the
            # newer linux-base there.
            packages.append(f"linux-base/{self.archive_suite}")
        return packages

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "suite": self.archive_suite, "system": self.suite,
                "flavor": self.flavor, "series": self.series}

    def needs(self) -> list[str]:
        """The packages of the archive a build for this kernel needs by name (the others
        come from its suite's own minbase and the headers' dependencies)."""
        return [f"linux-image-{self.release}", f"linux-headers-{self.release}",
                f"linux-source-{self.series}"]


def _source_lines(suite: Suite, src: bool) -> list[str]:
    """The suite's apt lines: of binary packages, or (`src`) of source packages."""
    lines = suite.source_lines()
    return [re.sub(r"^deb\s", "deb-src ", line) for line in lines] if src else lines


def _apt_dir(suite: Suite, src: bool = False) -> Path:
    """apt's folder for the suite, named by what it reads: other sources, another folder."""
    what = json.dumps([_source_lines(suite, src), suite.check_valid_until])
    return cache_root() / "apt" / f"{suite.name}-{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def _apt_options(suite: Suite, root: Path) -> list[str]:
    options = {
        "Dir::Etc::SourceList": root / "sources.list",
        "Dir::Etc::SourceParts": root / "sources.list.d",
        "Dir::Etc::Preferences": root / "preferences",
        "Dir::Etc::PreferencesParts": root / "preferences.d",
        "Dir::State": root / "state",
        "Dir::State::status": root / "status",
        "Dir::Cache": root / "cache",
        "APT::Architecture": "amd64",
        "APT::Architectures": "amd64",
        "Acquire::Languages": "none",
        "APT::Sandbox::User": "root" if os.geteuid() == 0 else os.environ.get("USER", ""),
        "Acquire::Check-Valid-Until": "true" if suite.check_valid_until else "false",
    }
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def update_indexes(suite: Suite, refresh: bool = False, src: bool = False) -> Path:
    """Download (if older than MAX_AGE_HOURS, or `refresh`) the suite's package indexes
    (`src`: its source package indexes); return apt's folder for them."""
    root = _apt_dir(suite, src)
    lists = root / "state" / "lists"
    stamp = root / "updated"
    with file_lock(root.with_suffix(".lock"), f"waiting for another read of {suite.name}'s "
                   "indexes"):
        if (not refresh and stamp.is_file()
                and time.time() - stamp.stat().st_mtime < MAX_AGE_HOURS * 3600):
            return root
        for folder in (root / "sources.list.d", root / "preferences.d", lists / "partial",
                       root / "cache" / "archives" / "partial"):
            folder.mkdir(parents=True, exist_ok=True)
        (root / "sources.list").write_text("".join(line + "\n"
                                                   for line in _source_lines(suite, src)))
        (root / "status").touch()
        stamp.unlink(missing_ok=True)
        try:
            run = subprocess.run(["apt-get", *_apt_options(suite, root), "-q", "update"],
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 errors="replace", check=False)
        except FileNotFoundError:
            raise InfraError("apt-get is not installed (is this Debian?)") from None
        failed = [line for line in (run.stdout + run.stderr).splitlines()
                  if line.startswith(("E:", "Err:"))]
        if run.returncode != 0 or failed:
            raise ArchiveIndexError((failed or [f"apt-get exit {run.returncode}"])[0],
                                    suite=suite.name)
        stamp.touch()
    return root


def read_kernels(suite: Suite, refresh: bool = False) -> list[ArchiveKernel]:
    """The kernels in the suite's Packages indexes, found and decompressed by apt itself
    (`apt-get indextargets`, `apt-helper cat-file`) whatever format it keeps them in."""
    root = update_indexes(suite, refresh)
    targets = _apt(["apt-get", *_apt_options(suite, root), "indextargets", "--format",
                    "$(FILENAME)\t$(CODENAME)", "Identifier: Packages"], suite)
    images: list[tuple[str, str]] = []
    served: set[str] = set()
    depends: dict[str, set[str]] = {}
    for line in targets.splitlines():
        path, _, codename = line.partition("\t")
        if not Path(path).is_file():
            continue
        text = _apt([APT_HELPER, "cat-file", path], suite)
        for match in _LINUX_STANZA.finditer(text):
            served.add(match[1])
            if match[1].startswith("linux-headers-"):
                depends.setdefault(match[1], set()).update(_linux_depends(match[2]))
        for release in sorted(set(_IMAGE.findall(text))):
            if not re.search(r"-(?:unsigned|dbg)$", release):
                # An index without a Release file leaves the field unexpanded.
                images.append((release, suite.name if codename.startswith("$(") else codename))
    found = []
    for release, where in images:
        kernel = ArchiveKernel(release=release, archive_suite=where, suite=suite.name)
        needed = kernel.needs() + sorted(depends.get(f"linux-headers-{release}", ()))
        found.append(ArchiveKernel(release=release, archive_suite=where, suite=suite.name,
                                   missing=tuple(p for p in needed if p not in served)))
    return found


#: A stanza of a package whose name starts with linux- (headers, images, sources, kbuild),
#: with the rest of its fields.
_LINUX_STANZA = re.compile(r"^Package: (linux-\S+)\n((?:[^\n]+\n?)*)", re.MULTILINE)


def _linux_depends(fields: str) -> list[str]:
    """The linux-* packages a stanza's Depends names (the first of each alternative,
    without versions): the headers' -common and linux-kbuild-X.Y."""
    match = re.search(r"^Depends: (.*)$", fields, re.MULTILINE)
    if not match:
        return []
    names = (part.split("|")[0].split("(")[0].split(":")[0].strip()
             for part in match[1].split(","))
    return [name for name in names if name.startswith("linux-")]


def _apt(argv: list[str], suite: Suite) -> str:
    try:
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", check=False)
    except FileNotFoundError:
        raise InfraError(f"{argv[0]} is not installed (is this Debian?)") from None
    if run.returncode != 0:
        last = run.stderr.strip().splitlines()[-1:] or [f"{argv[0]} exit {run.returncode}"]
        raise ArchiveIndexError(last[0], suite=suite.name)
    return run.stdout


def available_kernels(suites: Sequence[str] | None = None, refresh: bool = False
                      ) -> list[ArchiveKernel]:
    """Every kernel the archive offers for our flavors, newest first; a release carried
    by two suites is listed with the first suite of suites/ that has it (by release)."""
    known = load_suites()
    names = list(suites) if suites else sorted(known, key=lambda n: _suite_order(known[n]))
    kernels: dict[str, ArchiveKernel] = {}
    for name in names:
        for kernel in read_kernels(known[name], refresh):
            kernels.setdefault(kernel.release, kernel)
    return sorted(kernels.values(), key=lambda k: (version_key(k.release), k.release),
                  reverse=True)


def _suite_order(suite: Suite) -> tuple[int, str]:
    return (int(suite.release) if suite.release.isdigit() else 1000, suite.name)


def find_available(spec: str, kernels: Sequence[ArchiveKernel]) -> ArchiveKernel:
    """The kernel named by `spec`: a release ("7.3.4+deb13-amd64"), or a series with an
    optional flavor ("5.10", "7.3-rt-amd64"), the newest the archive serves whole. A
    kernel it no longer serves whole is refused, naming what is missing and the nearest
    kernels that can be had."""
    whole = [k for k in kernels if not k.missing]
    series, _, flavor = spec.partition("-")
    flavor = flavor or "amd64"
    for kernel in kernels:
        if kernel.release == spec:
            if kernel.missing:
                raise KernelNotServedError(release=spec, missing=", ".join(kernel.missing),
                                           hint=_nearest(kernel.release, kernel, whole))
            return kernel
    matching = [k for k in kernels if k.series == series and k.flavor == flavor]
    if any(not k.missing for k in matching):
        return next(k for k in matching if not k.missing)
    if matching:
        raise KernelNotServedError(release=matching[0].release,
                                   missing=", ".join(matching[0].missing),
                                   hint=_nearest(spec, matching[0], whole))
    near = difflib.get_close_matches(spec, [k.release for k in whole], n=3, cutoff=0.5)
    hint = f"; nearest: {', '.join(near)}" if near else ""
    raise UnknownKernelError(spec=spec, hint=hint + " (pfq-omatic kernels --available)")


def _nearest(spec: str, like: ArchiveKernel, whole: Sequence[ArchiveKernel]) -> str:
    """"; nearest that can be had: ..." in --available order: the same flavor's kernels
    of the same series first, then the releases closest in name."""
    same = [k.release for k in whole if k.flavor == like.flavor and k.series == like.series]
    near = same[:3] or difflib.get_close_matches(spec, [k.release for k in whole], n=3,
                                                 cutoff=0.5)
    return (f"; nearest that can be had: {', '.join(near)}" if near else "") + (
        " (pfq-omatic kernels --available)")


def system_kernel(kernel: ArchiveKernel, note: Any = None) -> Kernel:
    """`kernel` in a kept system of its suite holding its packages, made on first use."""
    return system_kernels([kernel], note=note)[0]


def system_kernels(kernels: Sequence[ArchiveKernel], note: Any = None) -> list[Kernel]:
    """`kernels` in kept systems, one per suite holding the packages of all of that suite's
    kernels asked for: a matrix makes each suite's system once."""
    def make(suite: str) -> Path:
        packages = sorted({p for k in kernels if k.suite == suite for p in k.packages()})
        return ensure_root(SystemSpec.of(suite, packages), note=note)

    # Making a system waits mostly on the archive and dpkg: two at once use the machine.
    suites = sorted({k.suite for k in kernels})
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        roots = dict(zip(suites, pool.map(make, suites), strict=True))
    found = []
    for kernel in kernels:
        root = roots[kernel.suite]
        build_dir = root / "usr/src" / f"linux-headers-{kernel.release}"
        if not (build_dir / "Module.symvers").is_file():
            raise InfraError(f"the {kernel.suite} system at {root} has no headers for "
                             f"{kernel.release}")
        found.append(Kernel(release=kernel.release, build_dir=build_dir, root=root,
                            suite=kernel.suite))
    return found


def served(kernel: ArchiveKernel) -> bool:
    """True when the archive serves the kernel's image and headers: an index can list a
    package the pool no longer holds (a mirror's 404), which would fail its system."""
    suite = load_suites()[kernel.suite]
    root = update_indexes(suite)
    run = subprocess.run(["apt-get", *_apt_options(suite, root), "download", "--print-uris",
                          f"linux-image-{kernel.release}", f"linux-headers-{kernel.release}"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         errors="replace", check=False)
    uris = re.findall(r"^'([^']+)'", run.stdout, re.MULTILINE)
    if run.returncode != 0 or len(uris) != 2:
        return False
    for uri in uris:
        if uri.startswith("file:"):
            if not Path(uri[len("file:"):]).is_file():
                return False
            continue
        try:
            urllib.request.urlopen(urllib.request.Request(uri, method="HEAD"), timeout=30)
        except urllib.error.HTTPError:
            return False
        except (urllib.error.URLError, OSError) as err:
            raise ArchiveIndexError(f"cannot reach {uri}: {err}", suite=kernel.suite) from None
    return True


def matrix_kernels(offered: Sequence[ArchiveKernel],
                   usable: Callable[[ArchiveKernel], bool] = lambda kernel: True,
                   note: Any = None) -> list[ArchiveKernel]:
    """The kernels a matrix covers by default: for each suite and each series it names
    (`kernels` in suites/SUITE.toml), the newest amd64 kernel; for the suite's newest
    series, its cloud and rt flavors too. Of each, the newest that is `usable` (`served`):
    a newer one is passed over with a note."""
    chosen = []
    for suite in load_suites().values():
        newest = max(suite.kernels, key=version_key, default=None)
        for series in suite.kernels:
            for flavor in FLAVORS if series == newest else ("amd64",):
                match = sorted((k for k in offered if k.suite == suite.name
                                and k.series == series and k.flavor == flavor),
                               key=lambda k: version_key(k.release), reverse=True)
                if not match:
                    raise ArchiveIndexError(f"no {series} kernel of flavor {flavor}",
                                            suite=suite.name)
                pick = next((k for k in match if not k.missing and usable(k)), None)
                if pick is None:
                    raise ArchiveIndexError(f"the archive serves no {series} kernel of "
                                            f"flavor {flavor} (its indexes list "
                                            f"{match[0].release})", suite=suite.name)
                if pick is not match[0] and note is not None:
                    note(f"{match[0].release}: listed, but the archive does not serve its "
                         f"packages; using {pick.release}")
                chosen.append(pick)
    return sorted(chosen, key=lambda k: (version_key(k.release), k.release))


def fetch_source(suite: Suite, package: str, dest: Path) -> Path:
    """Download the source package `package` of `suite` from Debian's archive into `dest`
    (its .dsc and tarballs, checked by apt against the signed indexes); its .dsc."""
    root = update_indexes(suite, src=True)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        run = subprocess.run(["apt-get", *_apt_options(suite, root), "-q", "source",
                              "--download-only", package], cwd=dest,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", check=False)
    except FileNotFoundError:
        raise InfraError("apt-get is not installed (is this Debian?)") from None
    dscs = sorted(dest.glob(f"{package}_*.dsc"))
    if run.returncode != 0 or len(dscs) != 1:
        lines = [line for line in (run.stderr + run.stdout).splitlines() if line.strip()]
        if any("Unable to find a source package" in line for line in lines):
            raise UserError(f"{suite.name}: Debian's archive has no source package {package}")
        raise ArchiveIndexError((lines or [f"apt-get exit {run.returncode}"])[-1],
                                suite=suite.name)
    return dscs[0]
