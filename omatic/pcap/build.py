"""`pfq-omatic pcap`: Debian's own libpcap with PFQ's capture source, installed privately.

1. The suite's libpcap source package comes from Debian's archive (apt, against its
   signed indexes) and is unpacked with dpkg-source, Debian's patches applied.
2. omatic.pcap.rewrite adds PFQ's capture source to it.
3. dpkg-buildpackage builds it, as Debian does, in a disposable system of the suite with
   the package's own Build-Depends: same configure, same SONAME (libpcap.so.0.8), same
   version script, plus pcap_fanout.
4. The library and its headers go to a folder of their own (PREFIX/lib, PREFIX/include,
   with Debian's copyright file of the source package and build.json),
   never over the system's copy; applications use it through LD_LIBRARY_PATH
   (`pfq-omatic run`). The folder appears whole or not at all: it is made beside its
   place and renamed into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic.cache import cache_root, file_lock
from omatic.data import PCAP_MODULE_DIR
from omatic.errors import BuildError, InfraError, PathError
from omatic.kernels.archive import fetch_source
from omatic.kernels.system import (
    Bind,
    CommandFailedError,
    Suite,
    SystemSpec,
    find_suite,
    run_command,
)
from omatic.pcap import rewrite
from omatic.pcap.rewrite import MODULE_FILES, UAPI, VERSION_TAG, add_pfq

#: The source package, and the binary packages whose files the install takes.
SOURCE_PACKAGE = "libpcap"
LIBRARY_PACKAGE = "libpcap0.8"
DEV_PACKAGE = "libpcap0.8-dev"
SONAME = "libpcap.so.0.8"
#: Debian's copyright file of the source package, kept in the prefix (for --deb).
COPYRIGHT = "copyright"
MULTIARCH = "x86_64-linux-gnu"
#: libpcap's own test programs (testprogs/), built from the same tree against the library
#: just built (statically, as their Makefile does) and kept in PREFIX/testprogs.
TESTPROGS = ("findalldevstest", "opentest", "capturetest", "nonblocktest", "selpolltest",
             "reactivatetest", "threadsignaltest")
#: Build-Depends that name a virtual package, and the real one that provides it.
VIRTUAL = {"debhelper-compat": "debhelper"}


def default_prefix(suite: str) -> Path:
    """Where the library of `suite` goes by default: $XDG_DATA_HOME/pfq-omatic/libpcap/SUITE
    (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pfq-omatic" / "libpcap" / suite


#: Where the package of `pfq-omatic pcap --deb` (omatic.pcap.deb) installs a prefix.
PACKAGE_PREFIX = Path("/usr/lib") / MULTIARCH / "pfq-omatic" / "libpcap"


def host_suite() -> str:
    """This machine's Debian suite (VERSION_CODENAME of /etc/os-release), or bookworm."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
    return match[1] if match else "bookworm"


def build_depends(dsc: str, arch: str = "amd64") -> list[str]:
    """The packages a .dsc's Build-Depends (and -Indep, -Arch) name for `arch` on Linux:
    alternatives take their first, version constraints go, architecture restrictions are
    honoured, build profiles other than negated ones leave a package out."""
    fields = re.findall(r"^Build-Depends(?:-Indep|-Arch)?:((?:.*)(?:\n[ \t].*)*)", dsc,
                        re.MULTILINE)
    names = []
    for relation in ",".join(fields).replace("\n", " ").split(","):
        first = relation.split("|")[0].strip()
        if not first:
            continue
        match = re.match(r"([a-z0-9][a-z0-9+.-]+)(?::\w+)?\s*(?:\([^)]*\))?\s*"
                         r"(?:\[([^\]]*)\])?\s*(<.*>)?$", first)
        if not match:
            raise BuildError(f"cannot read the build dependency {first!r}")
        name, archs, profiles = match[1], match[2], match[3]
        if archs and not arch_matches(archs.split(), arch):
            continue
        if profiles and not all(p.startswith("!") for p in re.findall(r"[^<>\s]+", profiles)):
            continue
        names.append(VIRTUAL.get(name, name))
    return sorted(set(names))


def arch_matches(archs: list[str], arch: str) -> bool:
    """Whether a Build-Depends architecture list ([linux-any], [!hurd-i386]) takes `arch`."""
    def hit(word: str) -> bool:
        return word in (arch, "any", "linux-any", f"any-{arch}", f"linux-{arch}")
    negated = [a[1:] for a in archs if a.startswith("!")]
    if negated:
        return not any(hit(a) for a in negated)
    return any(hit(a) for a in archs)


def source_digest() -> str:
    """A digest of what pfq-omatic adds to libpcap (our files and kmod's uapi.h) and of
    how it builds it (this module and the rewrite's)."""
    h = hashlib.sha256()
    for path in [*(PCAP_MODULE_DIR / name for name in MODULE_FILES), UAPI, Path(__file__),
                 Path(rewrite.__file__)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class PcapBuild:
    """A built libpcap with PFQ, as installed."""

    prefix: Path
    suite: str
    #: The Debian version it was built as ("1.10.3-1+pfq1").
    version: str
    #: pcap_lib_version() of the library.
    lib_version: str
    #: source_digest() of what was built in.
    digest: str
    #: The Depends of the suite's libpcap0.8 as built (the same library's, for a package).
    depends: str = ""

    @property
    def libdir(self) -> Path:
        return self.prefix / "lib"

    def to_json(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "suite": self.suite, "version": self.version,
                "lib_version": self.lib_version, "digest": self.digest,
                "depends": self.depends}


def installed(prefix: Path) -> PcapBuild | None:
    """The build installed at `prefix` (its build.json), or None."""
    try:
        data = json.loads((prefix / "build.json").read_text())
        return PcapBuild(prefix=prefix, suite=data["suite"], version=data["version"],
                         lib_version=data["lib_version"], digest=data["digest"],
                         depends=data.get("depends", ""))
    except (OSError, ValueError, KeyError):
        return None


def lib_version(libdir: Path) -> str:
    """pcap_lib_version() of the libpcap in `libdir`, asked in a process of its own."""
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); "
            "lib.pcap_lib_version.restype = ctypes.c_char_p; "
            "print(lib.pcap_lib_version().decode())")
    run = subprocess.run(["python3", "-I", "-c", code, str(libdir / SONAME)],
                         capture_output=True, text=True, check=False, timeout=60)
    if run.returncode != 0:
        raise BuildError(f"{libdir / SONAME} does not load: "
                         f"{(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return run.stdout.strip()


def lab_prefix(suite: str) -> Path:
    """Where the lab keeps the library its guests run tcpdump on (this machine's user
    space goes into the guests: its suite's libpcap)."""
    return cache_root() / "libpcap" / suite


def lab_libpcap(jobs: int = 1, note: Callable[[str], None] | None = None) -> PcapBuild:
    """The libpcap with PFQ the lab's guests run pcap applications on (built once, kept
    in the cache): of this machine's suite, whose user space the guests run."""
    suite = host_suite()
    return build_pcap(find_suite(suite), lab_prefix(suite), jobs=jobs, note=note)


def build_pcap(suite: Suite, prefix: Path, *, jobs: int = 1, force: bool = False,
               note: Callable[[str], None] | None = None) -> PcapBuild:
    """Build libpcap with PFQ for `suite` and install it at `prefix`, unless the same is
    there already (and not `force`). One build at a time per prefix (the matrix runs
    hook labs side by side)."""
    prefix = prefix.absolute()
    with file_lock(prefix.with_name(prefix.name + ".lock"),
                   f"waiting for another build of libpcap into {prefix}"):
        return _build_pcap(suite, prefix, jobs, force, note)


def _build_pcap(suite: Suite, prefix: Path, jobs: int, force: bool,
                note: Callable[[str], None] | None) -> PcapBuild:
    say = note or (lambda _text: None)
    digest = source_digest()
    have = installed(prefix)
    if have and have.digest == digest and have.suite == suite.name and not force:
        say(f"{prefix}: {have.lib_version} is up to date")
        return have
    prefix.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pfq-pcap-", dir=prefix.parent))
    try:
        say(f"fetching the source package {SOURCE_PACKAGE} of {suite.name}")
        dsc = fetch_source(suite, SOURCE_PACKAGE, work / "src")
        tree = work / "src" / "tree"
        _run(["dpkg-source", "--no-check", "-x", dsc.name, "tree"], dsc.parent,
             "unpacking " + dsc.name)
        version = add_pfq(tree, suite.name)
        packages = build_depends(dsc.read_text())
        say(f"building {SOURCE_PACKAGE} {version} in a disposable {suite.name} system "
            f"(Build-Depends: {' '.join(packages)})")
        started = time.monotonic()
        spec = SystemSpec.of(suite.name, packages, variant="buildd")
        log = "/build/build.log"
        script = (f"cd /build/tree && {{ DEB_BUILD_OPTIONS='nocheck parallel={jobs}' "
                  f"dpkg-buildpackage -b -uc -us && make -C testprogs {' '.join(TESTPROGS)}; "
                  f"}} > {log} 2>&1")
        try:
            run_command(spec, ["sh", "-c", script], binds=[Bind(work / "src", "/build")],
                        note=say)
        except CommandFailedError as err:
            raise BuildError(f"dpkg-buildpackage exited {err.fields['code']}; its log: "
                             f"{_keep_log(work, prefix)}") from None
        say(f"built in {time.monotonic() - started:.0f} s")
        stage = work / "install"
        depends = _install(work / "src", version, stage)
        shutil.copyfile(tree / "debian" / "copyright", stage / COPYRIGHT)
        (stage / "testprogs").mkdir()
        for name in TESTPROGS:
            shutil.copy2(tree / "testprogs" / name, stage / "testprogs" / name)
        built = PcapBuild(prefix=prefix, suite=suite.name, version=version,
                          lib_version=lib_version(stage / "lib"), digest=digest,
                          depends=depends)
        if VERSION_TAG not in built.lib_version:
            raise BuildError(f"the library built says {built.lib_version!r}, without "
                             f"{VERSION_TAG}: PFQ's module is not in it")
        (stage / "build.json").write_text(json.dumps(built.to_json(), indent=1) + "\n")
        _replace(stage, prefix)
        return built
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], cwd: Path, what: str) -> None:
    _output(argv, cwd, what)


def _output(argv: list[str], cwd: Path, what: str) -> str:
    """What `argv` printed; a BuildError saying `what` failed if it did."""
    try:
        run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                             check=False)
    except FileNotFoundError:
        raise InfraError(f"{argv[0]} is not installed; `make setup` installs it") from None
    if run.returncode != 0:
        last = (run.stderr.strip() or run.stdout.strip()).splitlines()[-1:] or ["?"]
        raise BuildError(f"{what}: {argv[0]} exit {run.returncode}: {last[0]}")
    return run.stdout.strip()


def _keep_log(work: Path, prefix: Path) -> Path:
    """Keep a failed build's log beside the prefix (the work folder goes)."""
    log = prefix.parent / f"{prefix.name}.build.log"
    try:
        shutil.copyfile(work / "src" / "build.log", log)
    except OSError:
        return work / "src" / "build.log"
    return log


def _install(built: Path, version: str, stage: Path) -> str:
    """The library (its SONAME link too) and the headers of the built .debs, in `stage`;
    the library package's Depends."""
    unpacked = built / "unpacked"
    depends = ""
    for package in (LIBRARY_PACKAGE, DEV_PACKAGE):
        debs = sorted(built.glob(f"{package}_{version}_*.deb"))
        if len(debs) != 1:
            raise BuildError(f"dpkg-buildpackage made no {package} {version} package")
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], built, f"unpacking {debs[0].name}")
        if package == LIBRARY_PACKAGE:
            depends = _output(["dpkg-deb", "-f", str(debs[0]), "Depends"], built,
                              f"reading {debs[0].name}")
    libdir = unpacked / "usr" / "lib" / MULTIARCH
    (stage / "lib").mkdir(parents=True)
    real = sorted(p for p in libdir.glob("libpcap.so.*") if not p.is_symlink())
    if len(real) != 1:
        raise BuildError(f"{libdir}: expected one libpcap.so.VERSION, found {len(real)}")
    shutil.copy2(real[0], stage / "lib" / real[0].name)
    (stage / "lib" / SONAME).symlink_to(real[0].name)
    (stage / "lib" / "libpcap.so").symlink_to(SONAME)
    shutil.copytree(unpacked / "usr" / "include", stage / "include", symlinks=True)
    if not (stage / "include" / "pcap" / "pfq.h").is_file():
        raise PathError("missing from the built headers", path="pcap/pfq.h")
    return depends


def _replace(stage: Path, prefix: Path) -> None:
    """Put `stage` at `prefix` in one rename; what was there goes after."""
    old = prefix.with_name(prefix.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if prefix.exists():
        prefix.rename(old)
    stage.rename(prefix)
    shutil.rmtree(old, ignore_errors=True)
