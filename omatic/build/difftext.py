"""Unified diffs of rewritten files that `patch -p1` applies exactly.

The diff is made from the edits themselves, not by comparing the two texts: the edits say
exactly which lines changed, so the diff costs time linear in the file and never pairs the
wrong one of many identical lines. Lines are split on b"\\n" only, so CR bytes (CRLF
files) stay inside their line and non-UTF-8 bytes pass through untouched; a last line
without a newline gets the "\\ No newline at end of file" marker patch expects.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Protocol

_NO_EOL = b"\n\\ No newline at end of file\n"


class EditLike(Protocol):
    """What the diff needs of an edit: replace bytes [start, end) with `new`."""

    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def new(self) -> bytes: ...


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their b"\\n"; the last one may lack it."""
    lines = [line + b"\n" for line in data.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _emit(prefix: bytes, lines: Sequence[bytes]) -> list[bytes]:
    return [prefix + line if line.endswith(b"\n") else prefix + line + _NO_EOL
            for line in lines]


def _range(start: int, length: int) -> bytes:
    """The `start,length` of a hunk header (1-based; start is the line before when empty)."""
    if length == 1:
        return b"%d" % (start + 1)
    return b"%d,%d" % (start + 1 if length else start, length)


def _chunks(old: bytes, starts: list[int], edits: Sequence[EditLike]
            ) -> list[tuple[int, int, list[bytes]]]:
    """Changed old line ranges [a0, a1) and the new lines replacing each, edits merged."""
    def line_of(offset: int) -> int:
        return bisect_right(starts, offset) - 1

    spans: list[list[int]] = []
    for e in sorted(edits, key=lambda e: (e.start, e.end)):
        a0 = line_of(e.start)
        if e.start == e.end and starts[a0] == e.start:  # an insertion between two lines
            a1 = a0
        else:
            a1 = line_of(max(e.end - 1, e.start)) + 1
        if spans and a0 < spans[-1][1]:  # shares a line with the previous edit
            spans[-1][1] = max(spans[-1][1], a1)
            spans[-1].append(id(e))
        else:
            spans.append([a0, a1, id(e)])
    by_id = {id(e): e for e in edits}
    out = []
    for a0, a1, *ids in spans:
        lo = starts[a0] if a0 < len(starts) else len(old)
        hi = starts[a1] if a1 < len(starts) else len(old)
        piece = bytearray(old[lo:hi])
        for e in sorted((by_id[i] for i in ids), key=lambda e: e.start, reverse=True):
            piece[e.start - lo:e.end - lo] = e.new
        out.append((a0, a1, split_lines(bytes(piece))))
    return out


def diff_edits(path: str, old: bytes, edits: Sequence[EditLike], context: int = 3) -> bytes:
    """The diff that applies `edits` (non-overlapping) to `old`, headed a/path and b/path."""
    if not edits:
        return b""
    lines = split_lines(old)
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line))
    chunks = _chunks(old, starts, edits)
    # Group chunks whose context would touch into hunks.
    hunks: list[list[tuple[int, int, list[bytes]]]] = []
    for chunk in chunks:
        if hunks and chunk[0] - hunks[-1][-1][1] <= 2 * context:
            hunks[-1].append(chunk)
        else:
            hunks.append([chunk])
    name = path.encode("utf-8", "surrogateescape")
    out = [b"--- a/" + name + b"\n+++ b/" + name + b"\n"]
    delta = 0  # new line number minus old line number before the current hunk
    for hunk in hunks:
        h0 = max(0, hunk[0][0] - context)
        h1 = min(len(lines), hunk[-1][1] + context)
        body: list[bytes] = []
        at, new_len = h0, 0
        for a0, a1, new_lines in hunk:
            body += _emit(b" ", lines[at:a0])
            body += _emit(b"-", lines[a0:a1])
            body += _emit(b"+", new_lines)
            new_len += (a0 - at) + len(new_lines)
            at = a1
        body += _emit(b" ", lines[at:h1])
        new_len += h1 - at
        out.append(b"@@ -" + _range(h0, h1 - h0) + b" +" + _range(h0 + delta, new_len) + b" @@\n")
        out += body
        delta += new_len - (h1 - h0)
    return b"".join(out)
