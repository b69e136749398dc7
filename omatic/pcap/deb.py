"""`pfq-omatic pcap --deb`: a built libpcap with PFQ as a Debian package, libpcap0.8-pfq.

The package holds what `pfq-omatic pcap` installs in its prefix (the library, its SONAME
link, the headers with pcap/pfq.h, build.json), at PACKAGE_PREFIX: a private folder, so
that it installs beside the system's libpcap0.8 and never over it (no file of theirs is
shared, no ldconfig trigger, no shlibs). `pfq-omatic run` finds it there when no build of
its own is in the user's prefix. Its Depends are those Debian's build of the same library
computed (kept in build.json), so the package is right for the suite it was built for,
whatever suite builds the package. It is made by dpkg-buildpackage and debhelper, and
lintian's errors and warnings fail it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omatic import __version__
from omatic.cache import made_dirs
from omatic.debpkg import maintainer, run_lintian
from omatic.errors import BuildError, InfraError, OutputError
from omatic.pcap.build import COPYRIGHT, PACKAGE_PREFIX, SOURCE_PACKAGE, PcapBuild
from omatic.templates import render

PACKAGE = "libpcap0.8-pfq"
#: What of the prefix goes into the package (not testprogs/, which the lab uses).
PACKAGED = ("lib", "include")


@dataclass
class PcapDeb:
    """A libpcap0.8-pfq package, made."""

    path: Path
    #: lintian's tags for it (I: lines; E: and W: fail the package).
    lintian: list[str] = field(default_factory=list)


def check_tools() -> None:
    """What packaging needs, asked before anything is built."""
    for tool in ("dpkg-buildpackage", "dh", "lintian"):
        if shutil.which(tool) is None:
            raise InfraError(f"{tool} is not installed; run `make setup` (it installs "
                             "debhelper and lintian)")


def build_deb(build: PcapBuild, out_dir: Path) -> PcapDeb:
    """Package the library installed at `build.prefix` as
    `libpcap0.8-pfq_VERSION_amd64.deb` in `out_dir`."""
    check_tools()
    if not build.depends or not (build.prefix / COPYRIGHT).is_file():
        raise BuildError(f"{build.prefix} was built by an older pfq-omatic, without what a "
                         "package needs: rebuild it with pfq-omatic pcap --force")
    now = datetime.now(UTC)
    # Its Source is libpcap: it is Debian's libpcap source with a module added (and so
    # lintian knows it for libpcap itself, not an embedded copy of it).
    context = {"package": PACKAGE, "source": SOURCE_PACKAGE, "build": build,
               "prefix": str(PACKAGE_PREFIX),
               "upstream": re.sub(r"-[^-]*$", "", build.version), "maintainer": maintainer(),
               "tool_version": __version__, "year": now.year,
               "date": now.strftime("%a, %d %b %Y %H:%M:%S +0000"),
               "copyright": (build.prefix / COPYRIGHT).read_text().rstrip()}
    try:
        with made_dirs(out_dir):
            return _package(context, build, out_dir)
    except OSError as err:
        raise OutputError.of(err, out_dir) from None


def _package(context: dict[str, Any], build: PcapBuild, out_dir: Path) -> PcapDeb:
    name = f"{PACKAGE}_{build.version}_amd64.deb"
    work = Path(tempfile.mkdtemp(prefix=".deb-", dir=out_dir))
    try:
        src = work / f"{PACKAGE}-{build.version}"
        for part in PACKAGED:
            shutil.copytree(build.prefix / part, src / "files" / part, symlinks=True)
        packaged = {**build.to_json(), "prefix": str(PACKAGE_PREFIX)}
        (src / "files" / "build.json").write_text(json.dumps(packaged, indent=1) + "\n")
        debian = src / "debian"
        (debian / "source").mkdir(parents=True)
        (debian / "source" / "format").write_text("3.0 (native)\n")
        for template, target, mode in (
                ("control.j2", "control", 0o644), ("rules.j2", "rules", 0o755),
                ("changelog.j2", "changelog", 0o644), ("copyright.j2", "copyright", 0o644),
                ("install.j2", f"{PACKAGE}.install", 0o644)):
            path = debian / target
            path.write_text(render(f"libpcap-deb/{template}", **context))
            path.chmod(mode)
        _dpkg_buildpackage(src, work / "dpkg-buildpackage.log")
        built = work / name
        if not built.is_file():
            raise BuildError(f"dpkg-buildpackage made no {name}")
        tags = run_lintian(built)
        bad = [line for line in tags if line.startswith(("E:", "W:"))]
        if bad:
            raise BuildError("lintian finds fault with the package:\n" + "\n".join(bad))
        final = out_dir / name
        built.rename(final)
        return PcapDeb(path=final, lintian=tags)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _dpkg_buildpackage(src: Path, log: Path) -> None:
    with open(log, "wb") as sink:
        code = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src,
                              stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              check=False).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BuildError(f"dpkg-buildpackage failed (exit {code}):\n{tail}")
