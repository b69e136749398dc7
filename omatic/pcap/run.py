"""`pfq-omatic run -- APP ARGS`: an unmodified libpcap application on the libpcap that
`pfq-omatic pcap` built, through LD_LIBRARY_PATH, after checking it will really load it.

The checks say, before anything runs, what would otherwise go unseen (the troubles users
of rebuilt libpcaps have reported: applications silently on the system's copy):
- an application that is setuid, setgid or has file capabilities runs in the loader's
  secure-execution mode, which ignores LD_LIBRARY_PATH (ld.so(8));
- an application that does not load libpcap.so.0.8 (statically linked, or another
  SONAME) cannot be given this one;
- the loader, asked with LD_LIBRARY_PATH set, must resolve libpcap.so.0.8 to ours;
- the same for the program an application runs to capture: tshark and wireshark run
  dumpcap, which Debian gives file capabilities when non-superusers may capture.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from omatic.errors import UserError
from omatic.pcap.build import (
    PACKAGE_PREFIX,
    SONAME,
    PcapBuild,
    default_prefix,
    host_suite,
    installed,
)

#: Programs that capture by running the dumpcap beside them (Wireshark's).
DUMPCAP_USERS = ("tshark", "wireshark")
#: The dynamic loader of this machine's programs.
LOADER = Path("/lib64/ld-linux-x86-64.so.2")


class NotBuiltError(UserError):
    template = ("no libpcap with PFQ at {prefix}: build it first with `pfq-omatic pcap`"
                "{prefix_option}")


def find_build(prefix: Path | None, package_prefix: Path = PACKAGE_PREFIX) -> PcapBuild:
    """The build at `prefix`; by default this machine's suite's, else the one the
    libpcap0.8-pfq package installed; or NotBuiltError."""
    if prefix is not None:
        build = installed(prefix)
        if build is None:
            raise NotBuiltError(prefix=prefix, prefix_option=f" --prefix {prefix}")
        return build
    where = default_prefix(host_suite())
    build = installed(where) or installed(package_prefix)
    if build is None:
        raise NotBuiltError(prefix=where, prefix_option=" or install libpcap0.8-pfq "
                            "(made by `pfq-omatic pcap --deb`)")
    return build


def find_app(app: str) -> Path:
    """The program `app` names: a path, or a name on PATH (and the sbin folders)."""
    if "/" in app:
        path = Path(app)
    else:
        found = shutil.which(app) or shutil.which(app, path="/usr/sbin:/sbin")
        if found is None:
            raise UserError(f"{app}: no such program on PATH")
        path = Path(found)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UserError(f"{app}: not an executable file")
    return path


def secure_execution(path: Path) -> str | None:
    """Why the loader would ignore LD_LIBRARY_PATH for `path` (None: it would not)."""
    mode = path.stat().st_mode
    if mode & stat.S_ISUID:
        return "it is setuid"
    if mode & stat.S_ISGID:
        return "it is setgid"
    try:
        os.getxattr(path, "security.capability")
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise UserError(f"{path}: cannot read its file capabilities: {err.strerror}") from None
    return "it has file capabilities (getcap shows them)"


def loaded_libpcap(path: Path, env: Mapping[str, str]) -> str | None:
    """Where the loader finds libpcap.so.0.8 for `path` with `env` (None: it does not
    load it)."""
    run = subprocess.run([str(LOADER), "--list", str(path)], env=dict(env),
                         capture_output=True, text=True, check=False, timeout=60)
    if run.returncode != 0:
        raise UserError(f"{path}: not a dynamically linked program of this machine "
                        f"({(run.stderr.strip().splitlines() or ['?'])[-1]})")
    match = re.search(rf"^\s*{re.escape(SONAME)} => (\S+)", run.stdout, re.MULTILINE)
    return match[1] if match else None


def capture_helpers(app: Path) -> list[Path]:
    """The programs `app` runs to capture: Wireshark's tshark and wireshark run the dumpcap
    of their own folder, with their environment."""
    dumpcap = app.parent / "dumpcap"
    return [dumpcap] if app.name in DUMPCAP_USERS and dumpcap.is_file() else []


def prepare(build: PcapBuild, argv: Sequence[str], environ: Mapping[str, str]
            ) -> tuple[Path, dict[str, str]]:
    """The program to run and its environment, once every check passed."""
    if not argv:
        raise UserError("no application given: pfq-omatic run -- APP ARGS")
    app = find_app(argv[0])
    old = environ.get("LD_LIBRARY_PATH")
    env = {**environ, "LD_LIBRARY_PATH": str(build.libdir) + (f":{old}" if old else "")}
    for program in [app, *capture_helpers(app)]:
        who = str(program) if program == app else f"{program} (which {app.name} runs to capture)"
        why = secure_execution(program)
        if why:
            raise UserError(f"{who}: {why}, so the dynamic loader ignores LD_LIBRARY_PATH for "
                            "it (secure-execution mode, ld.so(8)) and it would capture through "
                            "the system's libpcap; run it as root without that bit or capability")
        where = loaded_libpcap(program, env)
        if where is None:
            raise UserError(f"{who}: it does not load {SONAME} (statically linked, or not a "
                            "libpcap application), so it cannot capture through this one")
        if Path(where).parent.resolve() != build.libdir.resolve():
            raise UserError(f"{who}: the loader finds {SONAME} at {where}, not in "
                            f"{build.libdir} (an rpath of its own?)")
    return app, env


def run_app(build: PcapBuild, argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Replace this process with the application on the library of `build`."""
    app, env = prepare(build, argv, environ)
    os.execve(app, [argv[0], *argv[1:]], env)
