"""Pristine Debian systems (`omatic.kernels.system`, `pfq-omatic env`).

Unit tests run against a fake mmdebstrap on PATH that makes a tiny busybox system, which
the real entering code unpacks, mounts and chroots into (as root, in namespaces): every
mount, process and folder of a run must be gone after it, however it ends. The `system`
tier makes a real Debian system with Debian's mmdebstrap and changes it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import omatic.kernels.system
from omatic.cli import main
from omatic.data import SUITES_DIR
from omatic.errors import UserError
from omatic.kernels.system import (
    ArchiveError,
    Bind,
    EnterError,
    NoSpaceError,
    SystemSpec,
    UnknownPackageError,
    cached_systems,
    chroot_argv,
    ensure_root,
    ensure_system,
    load_suites,
    mounts_under,
    run_in_system,
    systems_dir,
)

unit = pytest.mark.unit
system = pytest.mark.system

FAKE_MMDEBSTRAP = """\
#!{python}
# A stand-in for mmdebstrap: records its argv, then acts as FAKE_MODE says.
import json, os, sys, tarfile, time
from pathlib import Path
log = os.environ["FAKE_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = [a for a in sys.argv[1:] if not a.startswith("--")]
suite, dest = args[0], Path(args[1])
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "fetch":
    print("E: Failed to fetch http://deb.debian.org/debian/dists/x/InRelease "
          "Temporary failure resolving 'deb.debian.org'")
    sys.exit(1)
if mode == "nospace":
    dest.write_bytes(b"partial")
    print("tar: ./usr/lib: Cannot write: No space left on device")
    sys.exit(1)
if mode == "nopkg":
    print("E: Unable to locate package no-such-package")
    sys.exit(1)
if mode == "404":
    print("E: Failed to fetch http://deb.debian.org/debian/pool/main/l/x/x_1_amd64.deb  "
          "404  Not Found [IP: 192.0.2.1 80]")
    sys.exit(1)
if mode == "slow":
    dest.write_bytes(b"partial")
    time.sleep(60)
with tarfile.open(dest, "w") as tar:
    def add_dir(name):
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    for d in ("bin", "usr", "usr/bin", "proc", "sys", "dev", "etc", "root", "tmp", "mnt"):
        add_dir(d)
    tar.add("/bin/busybox", "bin/busybox")
    for applet in ("sh", "cat", "echo", "sleep", "mount", "ls", "id", "grep", "touch"):
        link = tarfile.TarInfo(f"bin/{{applet}}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    link = tarfile.TarInfo("usr/bin/env")
    link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
    tar.addfile(link)
    data = f"{{suite}}\\n".encode()
    info = tarfile.TarInfo("etc/suite")
    info.size = len(data)
    import io
    tar.addfile(info, io.BytesIO(data))
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake mmdebstrap first on PATH, and a cache of this test's own; returns the log
    of the fake's calls (one JSON argv a line)."""
    if os.geteuid() != 0:
        pytest.fail("entering systems in these tests needs root (as CI has)")
    if not Path("/bin/busybox").is_file():
        pytest.fail("/bin/busybox is missing: `make setup` installs busybox-static")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mmdebstrap"
    script.write_text(FAKE_MMDEBSTRAP.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def cache_files() -> list[str]:
    """Every file of the systems cache (the run folder's children too)."""
    root = systems_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


# -- suites and specs --------------------------------------------------------------------

@unit
def test_every_suite_file_loads() -> None:
    suites = load_suites()
    assert set(suites) == {p.stem for p in SUITES_DIR.glob("*.toml")}
    assert {"bookworm", "bullseye", "trixie", "sid"} <= set(suites)
    for suite in suites.values():
        assert all(line.startswith("deb http") for line in suite.source_lines())


@unit
def test_an_unknown_suite_names_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "create", "bokworm"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("pfq-omatic: error: unknown Debian suite 'bokworm'; did you mean bookworm? "
                   "(known: bookworm, bullseye, sid, trixie)")


@unit
def test_spec_key_and_command() -> None:
    spec = SystemSpec.of("bookworm", ["python3,make", "make"])
    assert spec.packages == ("make", "python3")
    assert spec.key() == SystemSpec.of("bookworm", ["make", "python3"]).key()
    assert spec.key() != SystemSpec.of("bookworm", ["make"]).key()
    argv = spec.mmdebstrap_argv(Path("/x/b.tar"))
    assert argv[:2] == ["mmdebstrap", "--variant=minbase"]
    assert "--include=make,python3" in argv
    assert argv[-4:] == ["/x/b.tar", "deb http://deb.debian.org/debian bookworm main",
                         "deb http://deb.debian.org/debian bookworm-updates main",
                         "deb http://deb.debian.org/debian-security bookworm-security main"]
    assert not any("Check-Valid-Until" in a for a in argv)
    # sid's frozen mirror serves an expired Release file: apt is told not to refuse it.
    assert '--aptopt=Acquire::Check-Valid-Until "false"' in \
        SystemSpec.of("sid").mmdebstrap_argv(Path("s.tar"))
    with pytest.raises(UserError, match="not a Debian package name"):
        SystemSpec.of("bookworm", ["make;rm"])


# -- making and caching ------------------------------------------------------------------

@unit
def test_a_system_is_made_once_then_reused(fake: Path) -> None:
    spec = SystemSpec.of("bookworm", ["make"])
    tarball, made = ensure_system(spec)
    assert made and tarball.is_file() and len(calls(fake)) == 1
    assert ensure_system(spec) == (tarball, False) and len(calls(fake)) == 1
    (listed,) = cached_systems()
    assert listed["suite"] == "bookworm" and listed["packages"] == ["make"]
    assert listed["tarball"] == str(tarball) and listed["bytes"] == tarball.stat().st_size
    # --refresh makes it anew; an older tarball of the same system goes.
    old = tarball.with_name(tarball.name.replace(tarball.name[-12:-4], "20200101"))
    tarball.rename(old)
    new, made = ensure_system(spec)
    assert made and not old.exists() and len(calls(fake)) == 2
    assert ensure_system(spec, refresh=True)[1] and len(calls(fake)) == 3
    assert [f for f in cache_files() if f.endswith(".tar")] == [new.name]


@unit
def test_two_runs_making_one_system_make_it_once(fake: Path, tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "omatic", "env", "create", "bookworm"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(calls(fake)) == 1
    assert sum("waiting for another run making the bookworm system" in o for o in outputs) <= 1
    assert len({o.splitlines()[-1].split()[0] for o in outputs}) == 1  # the same tarball
    assert not [f for f in cache_files() if f.endswith(".lock")]


@unit
@pytest.mark.parametrize(("mode", "error", "code"), [
    ("fetch", ArchiveError, 2), ("nospace", NoSpaceError, 2), ("nopkg", UnknownPackageError, 1),
    ("404", UnknownPackageError, 1)])
def test_a_failed_bootstrap_is_named_and_leaves_nothing(
        fake: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        mode: str, error: type[Exception], code: int) -> None:
    monkeypatch.setenv("FAKE_MODE", mode)
    with pytest.raises(error) as raised:
        ensure_system(SystemSpec.of("bookworm"))
    assert "bookworm" in str(raised.value)
    assert [f for f in cache_files() if not f.endswith(".log")] == []
    assert main(["env", "create", "bookworm"]) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pfq-omatic: error:")]
    assert len(errors) == 1 and "Traceback" not in err


@unit
def test_no_mmdebstrap_is_an_infrastructure_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(omatic.kernels.system, "MMDEBSTRAP", str(tmp_path / "no-mmdebstrap"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["env", "create", "bookworm"]) == 2
    assert "install the Debian package mmdebstrap" in capsys.readouterr().err


@unit
def test_ctrl_c_during_a_bootstrap_leaves_no_partial_tarball(fake: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("FAKE_MODE", "slow")
    proc = subprocess.Popen([sys.executable, "-m", "omatic", "env", "create", "sid"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(f.endswith(".tar") for f in cache_files()):
        assert time.monotonic() < deadline, "the fake mmdebstrap never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "interrupted" in proc.stderr.read()  # type: ignore[union-attr]
    assert [f for f in cache_files() if not f.endswith(".log")] == []


# -- running in a disposable copy --------------------------------------------------------

@pytest.fixture
def tiny(fake: Path) -> Iterator[Path]:
    """The fake's tiny bookworm system, as a cached tarball."""
    tarball, _ = ensure_system(SystemSpec.of("bookworm"))
    yield tarball
    assert not mounts_under(systems_dir())
    assert not list((systems_dir() / "run").iterdir())


@unit
def test_a_command_runs_inside_with_binds_and_nothing_stays(tiny: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "input").write_text("from the host\n")
    script = ("cat /etc/suite /mnt/input; grep -c ' /proc ' /proc/mounts; "
              "ls /dev/null; echo written > /mnt/output")
    assert run_in_system(tiny, "bookworm", ["sh", "-c", script],
                         binds=[Bind(work, "/mnt")], workdir="/mnt") == 0
    assert (work / "output").read_text() == "written\n"
    assert (work / "input").read_text() == "from the host\n"  # a bound folder is kept
    assert run_in_system(tiny, "bookworm", ["sh", "-c", "exit 3"]) == 3


@unit
def test_a_kept_system_is_unpacked_once_entered_and_cleaned(fake: Path, tmp_path: Path,
                                                            ) -> None:
    spec = SystemSpec.of("bookworm", ["make"])
    root = ensure_root(spec)
    assert (root / "etc/suite").is_file() and ensure_root(spec) == root
    assert len(calls(fake)) == 1
    work = tmp_path / "build"
    work.mkdir()
    argv = chroot_argv(root, ["sh", "-c", f"cat /etc/suite > {work}/out; exit 4"],
                       [Bind(work, str(work))])
    assert subprocess.run(argv, check=False).returncode == 4
    assert (work / "out").read_text() == (root / "etc/suite").read_text()
    assert not mounts_under(root)
    # The bind's mount point is all that stays in the kept system.
    assert not any((root / str(work).lstrip("/")).iterdir())
    assert main(["env", "clean"], out=io.StringIO()) == 0
    assert not root.exists() and not cached_systems()


@unit
def test_cli_run_clones_a_checkout_and_reports_the_exit(tiny: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    (repo / "README").write_text("committed\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (repo / "untracked").write_text("not in the clone\n")
    out = tmp_path / "out"
    out.mkdir()
    code, _ = cli("env", "run", "bookworm", "--clone", str(repo), "--bind", f"{out}:/out",
                  "--", "sh", "-c", "ls > /out/ls; cat README > /out/readme")
    assert code == 0
    assert (out / "ls").read_text().split() == ["README"]
    assert (out / "readme").read_text() == "committed\n"
    assert cli("env", "run", "bookworm", "--", "sh", "-c", "exit 4")[0] == 2
    assert capsys.readouterr().err.strip().endswith(
        "pfq-omatic: error: sh -c 'exit 4' exited 4 in the bookworm system")


@unit
def test_run_dry_run_prints_the_commands(fake: Path) -> None:
    code, out = cli("env", "run", "bookworm", "--include", "make", "--dry-run",
                    "--", "make", "-j2", "test")
    assert code == 0
    create, enter = out.splitlines()
    assert create.startswith("mmdebstrap --variant=minbase") and "--include=make" in create
    assert enter.endswith("sh /root make -j2 test")
    assert calls(fake) == []


@unit
def test_json_is_always_json(fake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json with --dry-run prints the same commands as JSON; env clean says what it
    removed as JSON; a real env run, whose output is the command's, refuses --json."""
    code, out = cli("env", "run", "bookworm", "--dry-run", "--json", "--", "make", "test")
    assert code == 0
    create, enter = json.loads(out)["dry_run"]
    assert create["argv"][0] == "mmdebstrap" and enter["line"].endswith("sh /root make test")
    code, out = cli("env", "create", "bookworm", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["dry_run"][0]["argv"][0] == "mmdebstrap"
    code, out = cli("env", "clean", "--json")
    assert code == 0 and json.loads(out) == {"removed": []}
    assert cli("env", "run", "bookworm", "--json", "--", "true")[0] == 1
    assert "--json is for --dry-run" in capsys.readouterr().err
    assert calls(fake) == []


@unit
def test_a_broken_tarball_is_an_enter_error(fake: Path) -> None:
    tarball = systems_dir() / "broken.tar"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"not a tarball")
    with pytest.raises(EnterError, match="entering the bookworm system failed"):
        run_in_system(tarball, "bookworm", ["true"])
    assert not mounts_under(systems_dir()) and not list((systems_dir() / "run").iterdir())


def _processes_with(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


@unit
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_no_mount_process_or_folder(tiny: Path, tmp_path: Path,
                                                             sig: signal.Signals) -> None:
    flag = tmp_path / "flag"
    flag.mkdir()
    marker = "4321.5"  # sleep's argument: how its process is found
    proc = subprocess.Popen(
        [sys.executable, "-m", "omatic", "env", "run", "bookworm", "--bind", f"{flag}:/mnt",
         "--", "sh", "-c", f"touch /mnt/started; sleep {marker}"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (flag / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    assert _processes_with(f"sleep {marker}")
    # The run's mounts live in its own namespace: none is visible here even now.
    assert not mounts_under(systems_dir())
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    assert "interrupted" in proc.stderr.read()  # type: ignore[union-attr]
    assert not _processes_with(f"sleep {marker}")
    assert flag.is_dir() and (flag / "started").exists()


# -- the real thing ----------------------------------------------------------------------

@system
def test_a_real_bookworm_system_changes_and_the_host_does_not(tmp_path: Path) -> None:
    """Installing a package changes the disposable copy only: the host lacks it before
    and after, and the next run's copy is pristine again."""
    def host_has_hello() -> bool:
        return subprocess.run(["dpkg-query", "-W", "hello"], capture_output=True,
                              check=False).returncode == 0

    assert not host_has_hello()
    spec = SystemSpec.of("bookworm")
    start = time.monotonic()
    tarball, _ = ensure_system(spec)
    made_in = time.monotonic() - start
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent("""\
        set -e
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hello \
            >/dev/null
        hello > /out/hello
        grep -c ' /proc ' /proc/mounts > /out/proc
        """)
    assert run_in_system(tarball, "bookworm", ["sh", "-c", script],
                         binds=[Bind(out, "/out")]) == 0
    assert (out / "hello").read_text() == "Hello, world!\n"
    assert not host_has_hello()
    assert run_in_system(tarball, "bookworm", ["sh", "-c", "! command -v hello"]) == 0
    start = time.monotonic()
    assert ensure_system(spec) == (tarball, False)
    assert time.monotonic() - start < min(1.0, made_in / 10)  # the second use costs nothing
    assert not mounts_under(systems_dir())


@pytest.mark.unit
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """lab.json, hooks.json and the matrix's files are written whole, with the mode every
    other output gets (mkstemp's own is 0600)."""
    from omatic.cache import write_atomic

    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "report.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
