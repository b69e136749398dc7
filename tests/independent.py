"""An independent count of entry-point sites, for checking the rewriter on real kernels.

It shares nothing with omatic.build.rewrite: gcc strips comments (`-fpreprocessed` runs no
directive), regular expressions drop string and character literals, directives that only
name a macro, labels, and member accesses; every remaining whole-word use of a callee counts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

_LITERAL = re.compile(rb'"(?:\\.|[^"\\\n])*"|' + rb"'(?:\\.|[^'\\\n])*'")
_NAMING_DIRECTIVE = re.compile(rb"^[ \t]*#[ \t]*(?:undef|ifdef|ifndef)\b[^\n]*$", re.MULTILINE)


def strip_comments(path: Path) -> bytes:
    """The file as gcc's preprocessor sees it with comments removed and nothing expanded."""
    # Not check=True: gcc complains of what it takes for directives ('#x' in a macro
    # body) yet writes the whole file.
    return subprocess.run(
        ["gcc", "-fpreprocessed", "-dD", "-E", "-P", "-x", "c", str(path)],
        check=False, capture_output=True).stdout


def count_sites(text: bytes, callees: list[str]) -> int:
    """Uses of the callees in comment-free C text, not counting what only names them."""
    text = _LITERAL.sub(b'""', text)
    text = _NAMING_DIRECTIVE.sub(b"", text)
    names = b"|".join(re.escape(c.encode()) for c in callees)
    text = re.sub(rb"\bdefined\s*\(?\s*(?:" + names + rb")\b", b"", text)
    text = re.sub(rb"#[ \t]*define[ \t]+(?:" + names + rb")\b", b"#define", text)
    # A label of that name, and the gotos to it.
    text = re.sub(rb"\bgoto\s+(?:" + names + rb")\b", b"goto", text)
    text = re.sub(rb"^[ \t]*(?:" + names + rb")[ \t]*:(?!:)", b"", text, flags=re.MULTILINE)
    uses = re.compile(rb"(?<![\w.>])(?<!->)\s*\b(?:" + names + rb")\b")
    return sum(1 for m in uses.finditer(text)
               if not text[max(0, m.start() - 2):m.start()].endswith((b".", b"->")))
