"""Debian's libpcap source with PFQ's capture source added: done by code on the unpacked
source package, as drivers are rewritten, so no line of libpcap lives in this repository.

What changes (each edit finds its line by a pattern, and fails naming the file when the
line is not there, rather than build a library without PFQ):
- our files (libpcap/ of this checkout, and kmod's uapi.h as pfq/uapi.h) are copied in;
- pcap.c includes pcap-pfq.h and gets a row of `capture_source_types[]`, before its end;
- Makefile.in compiles pcap-pfq.c and pfq-config.c with the other modules and installs
  <pcap/pfq.h> with the other public headers;
- the version string says "+pfq" (pcap_lib_version(): "libpcap version 1.10.3+pfq");
- Debian's version script and symbols file export pcap_fanout;
- debian/changelog gets an entry of its own, so the package's version says +pfq too.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omatic.data import KMOD_DIR, PCAP_MODULE_DIR
from omatic.errors import BuildError

#: Our half of the capture source, in PCAP_MODULE_DIR.
MODULE_FILES = ("pcap-pfq.c", "pcap-pfq.h", "pfq-config.c", "pfq-config.h", "pcap/pfq.h")
UAPI = KMOD_DIR / "include" / "pfq" / "uapi.h"
#: Added to the library's version string and to the package's Debian revision.
VERSION_TAG = "+pfq"


class RewriteError(BuildError):
    template = ("{path}: {message}: this libpcap source is not one pfq-omatic knows how to "
                "extend (Debian's libpcap 1.10 is)")


@dataclass(frozen=True)
class Edit:
    """One change to one file of the source tree."""

    path: str
    #: What the edit finds (a line, multiline regex) and what it does, for messages.
    what: str
    pattern: str
    change: Callable[[re.Match[str]], str]
    #: Where to start looking: the first line matching `pattern` after this text is the
    #: one. Without it, the file must have exactly one such line.
    after: str | None = None


def _after(line: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{m[0]}\n{line}"


def _before(line: str) -> Callable[[re.Match[str]], str]:
    return lambda m: f"{line}\n{m[0]}"


EDITS = (
    Edit("pcap-int.h", "the version string's #define",
         r'^#define PCAP_VERSION_STRING\s+"libpcap version " PACKAGE_VERSION$',
         lambda m: f'{m[0]} "{VERSION_TAG}"'),
    Edit("pcap.c", "its #include of pcap-int.h", r'^#include "pcap-int.h"$',
         _after('#include "pcap-pfq.h"')),
    Edit("pcap.c", "the end of capture_source_types[]", r"^\t\{ NULL, NULL \}$",
         _before("\t{ pfq_findalldevs, pfq_create },"), after="capture_source_types[] = {"),
    Edit("Makefile.in", "its MODULE_C_SRC line", r"^MODULE_C_SRC =\s*@MODULE_C_SRC@$",
         lambda m: f"{m[0]} pcap-pfq.c pfq-config.c"),
    Edit("Makefile.in", "pcap/pcap.h in PUBHDR", r"^\tpcap/pcap\.h \\$",
         _after("\tpcap/pfq.h \\")),
    Edit("libpcap-symbols.lds", "the version script's global: line", r"^\s*global:$",
         _after("    pcap_fanout;")),
)


def _apply(tree: Path, edit: Edit) -> None:
    path = tree / edit.path
    try:
        text = path.read_text()
    except OSError as err:
        raise RewriteError(f"cannot read it ({err.strerror})", path=edit.path) from None
    pattern = re.compile(edit.pattern, re.MULTILINE)
    if edit.after is not None:
        start = text.find(edit.after)
        match = pattern.search(text, start) if start >= 0 else None
    else:
        matches = list(pattern.finditer(text))
        match = matches[0] if len(matches) == 1 else None
    if match is None:
        raise RewriteError(f"no single line for {edit.what}", path=edit.path)
    path.write_text(text[:match.start()] + edit.change(match) + text[match.end():])


def debian_version(tree: Path) -> str:
    """The version of the first entry of debian/changelog ("1.10.3-1")."""
    first = (tree / "debian" / "changelog").read_text().split("\n", 1)[0]
    match = re.match(r"\S+ \((\S+)\)", first)
    if not match:
        raise RewriteError("no version on its first line", path="debian/changelog")
    return match[1]


def _debian(tree: Path, suite: str) -> str:
    """A changelog entry of our own and pcap_fanout in the symbols file; the new version."""
    changelog = tree / "debian" / "changelog"
    version = debian_version(tree) + f"{VERSION_TAG}1"
    source = changelog.read_text().split(" ", 1)[0]
    date = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
    changelog.write_text(
        f"{source} ({version}) {suite}; urgency=medium\n\n"
        "  * Rebuilt by pfq-omatic with PFQ's capture source (pfq:DEVICE) and\n"
        "    pcap_fanout().\n\n"
        f" -- pfq-omatic <pfq-omatic@localhost>  {date}\n\n" + changelog.read_text())
    symbols = tree / "debian" / "libpcap0.8.symbols"
    if symbols.is_file():
        _apply(tree, Edit("debian/libpcap0.8.symbols", "its first line", r"\A[^\n]*",
                          _after(f" pcap_fanout@Base {version}")))
    return version


def add_pfq(tree: Path, suite: str) -> str:
    """Add PFQ's capture source to the unpacked libpcap source at `tree`; the Debian
    version it now has."""
    for name in MODULE_FILES:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PCAP_MODULE_DIR / name, tree / name)
    (tree / "pfq").mkdir(exist_ok=True)
    shutil.copyfile(UAPI, tree / "pfq" / "uapi.h")
    for edit in EDITS:
        _apply(tree, edit)
    return _debian(tree, suite)
