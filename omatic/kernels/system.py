"""Pristine Debian systems: made by mmdebstrap, cached as tarballs, entered for one command.

A system is a Debian suite (`suites/NAME.toml`) plus packages, made by Debian's
`mmdebstrap` into a tarball. Tarballs are cached under `$XDG_CACHE_HOME/pfq-omatic/systems`,
named by suite, a hash of what went into them and the day they were made; one older than
`MAX_AGE_DAYS` is made anew. A run waits for another run making the same system rather
than making it twice, and a tarball appears under its name only once whole.

Each command runs in a disposable copy: the tarball is unpacked into a fresh folder and
entered with chroot, with /proc, /sys, /dev and the caller's folders bound in. All of it
happens in private mount and PID namespaces (util-linux `unshare` as root, mmdebstrap's
unshare helper otherwise), so no mount is ever visible outside and all of them, with every
process of the run, go with the namespace, however the run ends. The folder is removed
after. The host's resolver, site CA certificates and proxy settings are carried in, as any
chroot needs them to reach the archive.

Standard library only: CI makes a pristine system with the host's python3 alone, before
any virtualenv exists.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic.cache import cache_root, file_lock
from omatic.data import SUITES_DIR, load_toml_dir
from omatic.errors import InfraError, OmaticError, UserError

MMDEBSTRAP = "mmdebstrap"
ENTER_SCRIPT = Path(__file__).with_name("enter-system.sh")
#: Debian's archive and its security archive; a site with a mirror of its own sets these.
MIRROR = os.environ.get("PFQ_OMATIC_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("PFQ_OMATIC_SECURITY_MIRROR",
                                 "http://deb.debian.org/debian-security")
#: Days a cached system serves before it is made anew, with the archive's newer packages.
MAX_AGE_DAYS = 7
#: Variables carried into a system: how this site reaches the network, and whether this
#: is CI. Nothing else of the caller's environment goes in.
SITE_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
            "PIP_CERT", "PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "CI", "TERM")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- errors ------------------------------------------------------------------------------

class UnknownSuiteError(UserError):
    template = "unknown Debian suite {name!r}{hint} (known: {known})"


class UnknownPackageError(UserError):
    template = "{suite}: {message}; {advice}"

    def __init__(self, message: str = "", advice: str = "", **fields: Any) -> None:
        super().__init__(message, advice=advice or "the archive does not serve it (for a "
                         "kernel: pfq-omatic kernels --available lists those it serves "
                         "whole)", **fields)


class ArchiveError(InfraError):
    template = ("cannot reach Debian's archive for {suite}: {message} (check the network, "
                "or set PFQ_OMATIC_MIRROR to a mirror this machine reaches)")


class NoSpaceError(InfraError):
    template = "no space left on the device of {path} while making the {suite} system"


class BootstrapError(InfraError):
    template = "making the {suite} system failed: {message} (full log: {log})"


class MmdebstrapMissingError(InfraError):
    template = "{tool} is not installed; install the Debian package mmdebstrap (make setup)"


class EnterError(InfraError):
    template = "entering the {suite} system failed ({message}); see the lines above"


class CommandFailedError(OmaticError):
    template = "{command} exited {code} in the {suite} system"


# -- suites and specs --------------------------------------------------------------------

@dataclass(frozen=True)
class Suite:
    """A Debian suite systems are made of (`suites/NAME.toml`)."""

    #: Its name, which is also mmdebstrap's: "bookworm", "sid".
    name: str
    #: The file it was read from.
    path: Path
    #: Debian's release number ("12"), or "unstable".
    release: str
    #: apt source lines; {mirror} and {security} stand for the archive and its security one.
    sources: tuple[str, ...]
    #: False where the mirror may serve a Release file past its Valid-Until date.
    check_valid_until: bool = True
    #: Kernel series of this suite a matrix covers by default ("6.1", "6.12").
    kernels: tuple[str, ...] = ()

    def source_lines(self) -> list[str]:
        return [s.format(mirror=MIRROR, security=SECURITY_MIRROR) for s in self.sources]


def load_suites() -> dict[str, Suite]:
    """Every suite of suites/, by name."""
    return {s.name: s for s in load_toml_dir(SUITES_DIR, Suite)}


def find_suite(name: str) -> Suite:
    suites = load_suites()
    if name in suites:
        return suites[name]
    near = difflib.get_close_matches(name, list(suites), n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise UnknownSuiteError(name=name, hint=hint, known=", ".join(sorted(suites)))


@dataclass(frozen=True)
class SystemSpec:
    """What goes into a system: a suite, a variant, packages."""

    suite: Suite
    #: Packages on top of the variant's, sorted, each once.
    packages: tuple[str, ...] = ()
    #: mmdebstrap's variant: minbase (Essential and apt) or buildd (plus build-essential).
    variant: str = "minbase"

    @classmethod
    def of(cls, suite: str, packages: Sequence[str] = (), variant: str = "minbase"
           ) -> SystemSpec:
        names = sorted({p for item in packages for p in item.split(",") if p})
        for name in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+(?:/[a-z0-9-]+)?", name):
                raise UserError(f"{name!r} is not a Debian package name")
        return cls(suite=find_suite(suite), packages=tuple(names), variant=variant)

    def key(self) -> str:
        """A hash of everything that shapes the tarball."""
        data = [self.suite.name, self.suite.source_lines(), self.suite.check_valid_until,
                list(self.packages), self.variant]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:12]

    def mmdebstrap_argv(self, dest: Path) -> list[str]:
        """The mmdebstrap command writing this system to `dest` (a .tar)."""
        mode = "root" if os.geteuid() == 0 else "unshare"
        argv = [MMDEBSTRAP, f"--variant={self.variant}", f"--mode={mode}"]
        if self.packages:
            argv.append("--include=" + ",".join(self.packages))
        if not self.suite.check_valid_until:
            argv.append('--aptopt=Acquire::Check-Valid-Until "false"')
        return [*argv, self.suite.name, str(dest), *self.suite.source_lines()]

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite.name, "release": self.suite.release,
                "variant": self.variant, "packages": list(self.packages), "key": self.key(),
                "sources": self.suite.source_lines()}


# -- making and caching tarballs ---------------------------------------------------------

def systems_dir() -> Path:
    return cache_root() / "systems"


def _classify(log: str, spec: SystemSpec, dest: Path, log_path: Path) -> OmaticError:
    """The error a failed mmdebstrap run stands for, from its log."""
    suite = spec.suite.name
    if "No space left on device" in log:
        return NoSpaceError(path=dest.parent, suite=suite)
    match = re.search(r"E: (Unable to locate package \S+|Package '[^']+' has no "
                      r"installation candidate)", log)
    if match:
        return UnknownPackageError(match[1], suite=suite)
    # The archive answered, but its pool lacks a file its index lists (a mirror's 404).
    match = re.search(r"Failed to fetch \S+/([^/\s]+)\s+404\b", log)
    if match:
        return UnknownPackageError(f"the index lists {match[1]}, the pool does not hold it "
                                   "(404)", suite=suite)
    match = re.search(r"(Temporary failure resolving '[^']+'|Could not resolve '[^']+'|"
                      r"Failed to fetch \S+|Unable to connect to \S+|Could not connect to \S+|"
                      r"is (?:expired|not valid yet)[^\n]*)", log)
    if match:
        return ArchiveError(match[1], suite=suite)
    lines = [line for line in log.splitlines() if line.startswith(("E:", "W:"))]
    message = (lines or log.splitlines() or ["no output"])[-1]
    return BootstrapError(message, suite=suite, log=log_path)


def make_tarball(spec: SystemSpec, dest: Path) -> dict[str, Any]:
    """Run mmdebstrap for `spec` into `dest` (written whole or not at all, its log beside it
    as DEST.log) and return what is known of it, also written to DEST.json.

    As root, mmdebstrap mounts in the caller's namespace: it runs in a private one, with a
    folder of ours as its TMPDIR, which goes afterwards."""
    if shutil.which(MMDEBSTRAP) is None:
        raise MmdebstrapMissingError(tool=MMDEBSTRAP)
    folder = Path(tempfile.mkdtemp(prefix=f".making-{dest.stem}-", dir=dest.parent))
    partial = folder / dest.name
    log_path = dest.with_suffix(".log")
    argv = spec.mmdebstrap_argv(partial)
    start = time.monotonic()
    try:
        with open(log_path, "w") as log:
            log.write("$ " + shlex.join(argv) + "\n")
            log.flush()
            # Without root, mmdebstrap's namespace is its own, and its temp folder must be
            # one the namespace's root can write to: the default, /tmp.
            root = os.geteuid() == 0
            private = [*_helper(), "/bin/sh", str(ENTER_SCRIPT), "exec"] if root else []
            env = {**os.environ, "TMPDIR": str(folder)} if root else None
            code = _run_owned([*private, *argv], stdout=log, stderr=subprocess.STDOUT,
                              env=env)
        if code != 0:
            raise _classify(log_path.read_text(errors="replace"), spec, dest, log_path)
        meta = {**spec.to_json(), "tarball": str(dest),
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - start, 1),
                "bytes": partial.stat().st_size, "command": shlex.join(argv)}
        _write_json(dest.with_suffix(".json"), meta)
        partial.rename(dest)
        return meta
    except OSError as err:
        if err.errno == 28:  # ENOSPC
            raise NoSpaceError(path=dest.parent, suite=spec.suite.name) from None
        raise
    finally:
        _remove_tree(folder)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)


def _made_on(tarball: Path) -> datetime.date | None:
    match = re.search(r"-(\d{8})\.tar$", tarball.name)
    return datetime.datetime.strptime(match[1], "%Y%m%d").date() if match else None


def ensure_system(spec: SystemSpec, refresh: bool = False,
                  note: Any = None) -> tuple[Path, bool]:
    """The cached tarball of `spec`, made if missing, older than MAX_AGE_DAYS or `refresh`;
    returns it and whether it was made now."""
    folder = systems_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.suite.name}-{spec.key()}"
    with file_lock(folder / f".{stem}.lock",
                   f"waiting for another run making the {spec.suite.name} system"):
        today = datetime.datetime.now(datetime.UTC).date()
        existing = sorted(folder.glob(f"{stem}-*.tar"), reverse=True)
        for tarball in existing:
            made = _made_on(tarball)
            if not refresh and made and (today - made).days < MAX_AGE_DAYS:
                return tarball, False
        if note:
            note(f"making the {spec.suite.name} system with mmdebstrap")
        tarball = folder / f"{stem}-{today:%Y%m%d}.tar"
        make_tarball(spec, tarball)
        for old in existing:
            if old != tarball:
                remove_cached(old)
        return tarball, True


def remove_cached(tarball: Path) -> None:
    for path in (tarball, tarball.with_suffix(".json"), tarball.with_suffix(".log")):
        path.unlink(missing_ok=True)


def cached_systems() -> list[dict[str, Any]]:
    """What the cache holds: each tarball's facts (from its .json)."""
    found = []
    for meta in sorted(systems_dir().glob("*.json")):
        tarball = meta.with_suffix(".tar")
        if tarball.is_file():
            with contextlib.suppress(ValueError, OSError):
                found.append({**json.loads(meta.read_text()), "tarball": str(tarball)})
    return found


@contextlib.contextmanager
def fresh_system(spec: SystemSpec) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A tarball of `spec` made now, outside the cache, and removed afterwards."""
    systems_dir().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".fresh-", dir=systems_dir()))
    try:
        tarball = folder / f"{spec.suite.name}.tar"
        yield tarball, make_tarball(spec, tarball)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- kept systems ------------------------------------------------------------------------

def roots_dir() -> Path:
    return cache_root() / "roots"


def ensure_root(spec: SystemSpec, note: Any = None) -> Path:
    """A system of `spec` unpacked and kept, for commands that change nothing in it but the
    folders bound in (a Kbuild run). Unpacked once from the cached tarball under a partial
    name, then renamed: a folder under its own name is whole. A root of an older tarball
    of the same spec is removed."""
    if os.geteuid() != 0:
        raise InfraError(f"building in the {spec.suite.name} system needs root: without it "
                         "the system's files belong to subordinate ids that cannot write "
                         "the build folder")
    tarball, _ = ensure_system(spec, note=note)
    folder = roots_dir()
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / tarball.stem
    with file_lock(folder / f".{tarball.stem}.lock",
                   f"waiting for another run unpacking the {spec.suite.name} system"):
        if root.is_dir():
            return root
        if note:
            note(f"unpacking the {spec.suite.name} system")
        partial = folder / f".{tarball.stem}.partial"
        _remove_tree(partial)
        partial.mkdir()
        try:
            code = _run_owned([*_helper(), "/bin/sh", str(ENTER_SCRIPT), "unpack",
                               str(tarball), str(partial)], stdin=subprocess.DEVNULL)
            if code != 0:
                raise InfraError(f"unpacking {tarball} failed (exit {code})")
            partial.rename(root)
        finally:
            _remove_tree(partial)
    for old in folder.glob(f"{spec.suite.name}-{spec.key()}-*"):
        if old != root and old.is_dir():
            _remove_tree(old)
    return root


def remove_unpacked() -> list[Path]:
    """Remove the kept systems and the folders of runs that were killed; return them."""
    gone = []
    for folder in [*roots_dir().glob("*"), *(systems_dir() / "run").glob("*")]:
        if folder.is_dir():
            _remove_tree(folder)
            gone.append(folder)
    return gone


def chroot_argv(root: Path, argv: Sequence[str], binds: Sequence[Bind] = (),
                workdir: str = "/") -> list[str]:
    """The command running `argv` in the kept system at `root`, with `binds`; it exits
    with argv's status."""
    opts = [arg for bind in binds for arg in ("--bind", str(bind.source.absolute()),
                                              bind.target)]
    inside = ["/usr/bin/env", "-i", f"PATH={_PATH}", "HOME=/root", "LANG=C.UTF-8",
              "/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", workdir, *argv]
    return [*_helper(), "/bin/sh", str(ENTER_SCRIPT), "chroot", str(root), *opts, "--",
            *inside]


def chroot_at_own_paths(root: Path, argv: Sequence[str], uses: Sequence[Path]) -> list[str]:
    """The command running `argv` in the kept system at `root`, with the host folders
    `uses` bound at their own paths (each outermost folder once)."""
    folders = sorted({p.absolute() for p in uses})
    outer = [f for f in folders if not any(o in f.parents for o in folders)]
    return chroot_argv(root, argv, [Bind(f, str(f)) for f in outer])


# -- running a command in a disposable copy ----------------------------------------------

@dataclass(frozen=True)
class Bind:
    """A host folder seen inside the system."""

    source: Path
    #: Absolute path inside the system.
    target: str


def _helper() -> list[str]:
    """What puts the run in private namespaces."""
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child",
                "--propagation", "unchanged"]
    return [MMDEBSTRAP, "--unshare-helper"]


def site_env() -> dict[str, str]:
    return {k: os.environ[k] for k in SITE_ENV if k in os.environ}


def enter_argv(tarball: Path, root: Path, status: Path, argv: Sequence[str],
               binds: Sequence[Bind] = (), clones: Sequence[Bind] = (),
               workdir: str = "/root") -> list[str]:
    """The command that unpacks `tarball` at `root` and runs `argv` in it."""
    opts: list[str] = []
    for bind in binds:
        opts += ["--bind", str(bind.source.absolute()), bind.target]
    for clone in clones:
        opts += ["--clone", str(clone.source.absolute()), clone.target]
    env = [f"{k}={v}" for k, v in
           {"PATH": _PATH, "HOME": "/root", "LANG": "C.UTF-8", **site_env()}.items()]
    inside = ["/usr/bin/env", "-i", *env, "/bin/sh", "-c",
              'cd "$1" && shift && exec "$@"', "sh", workdir, *argv]
    return [*_helper(), "/bin/sh", str(ENTER_SCRIPT), "enter", str(tarball), str(root),
            str(status), *opts, "--", *inside]


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _run_owned(argv: Sequence[str], **popen: Any) -> int:
    """Run `argv` and wait; if we are interrupted, kill it with every process it started."""
    proc = subprocess.Popen(argv, **popen)
    try:
        return proc.wait()
    except BaseException:
        for pid in [proc.pid, *_children(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        raise


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def _remove_tree(folder: Path) -> None:
    """Remove a run's folder. Its mounts lived in the run's namespace only; should one show
    here all the same, the folder is left alone rather than deleted through a bind."""
    left = mounts_under(folder)
    if left:
        raise InfraError(f"{left[0]} is still mounted; {folder} was left in place")
    if os.geteuid() != 0:  # files owned by the subordinate ids need the namespace to go
        subprocess.run([*_helper(), "rm", "-rf", "--one-file-system", str(folder / "root")],
                       stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def _make_root(root: Path) -> None:
    """Make the folder a system is unpacked into. Without root, the namespace's root is a
    subordinate id, so the folder must be made by it: `work` is opened to it meanwhile."""
    if os.geteuid() == 0:
        root.mkdir()
        return
    work = root.parent
    work.chmod(0o777)
    try:
        subprocess.run([*_helper(), "mkdir", str(root)], stdin=subprocess.DEVNULL, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise InfraError(f"cannot make {root} in a user namespace: {err}") from None
    finally:
        work.chmod(0o755)


def run_in_system(tarball: Path, suite: str, argv: Sequence[str],
                  binds: Sequence[Bind] = (), clones: Sequence[Bind] = (),
                  workdir: str = "/root") -> int:
    """Run `argv` in a disposable copy of the system in `tarball`; its exit status."""
    runs = systems_dir() / "run"
    runs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{suite}-", dir=runs))
    root = work / "root"
    try:
        _make_root(root)
        # Written by the namespace's root, which may not write into `work`.
        status = root / ".pfq-omatic-status"
        cmd = enter_argv(tarball, root, status, argv, binds, clones, workdir)
        try:
            code = _run_owned(cmd, stdin=sys.stdin if sys.stdin.isatty()
                              else subprocess.DEVNULL)
        except FileNotFoundError as err:
            raise EnterError(f"{err.filename} is not installed", suite=suite) from None
        if not status.is_file():
            raise EnterError(f"exit {code}", suite=suite)
        return int(status.read_text())
    finally:
        _remove_tree(work)


def run_command(spec: SystemSpec, argv: Sequence[str], *, fresh: bool = False,
                refresh: bool = False, binds: Sequence[Bind] = (),
                clones: Sequence[Bind] = (), workdir: str = "/root",
                note: Any = None) -> None:
    """Run `argv` in a disposable system of `spec`: from the cache, or (`fresh`) made for
    this run alone. A non-zero exit raises CommandFailedError."""
    with contextlib.ExitStack() as stack:
        if fresh:
            if note:
                note(f"making a fresh {spec.suite.name} system with mmdebstrap")
            tarball, meta = stack.enter_context(fresh_system(spec))
            if note:
                note(f"made in {meta['seconds']} s, {meta['bytes'] / 2**20:.0f} MiB")
        else:
            tarball, _ = ensure_system(spec, refresh=refresh, note=note)
        if note:
            note(f"running in a disposable {spec.suite.name} system: {shlex.join(argv)}")
        code = run_in_system(tarball, spec.suite.name, argv, binds, clones, workdir)
    if code != 0:
        raise CommandFailedError(command=shlex.join(argv), code=code, suite=spec.suite.name)
