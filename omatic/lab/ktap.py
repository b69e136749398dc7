"""KTAP, the kernel's test output format (Documentation/dev-tools/ktap.rst), read on the host.

A document is a version line, a plan (`1..N`) and N result lines (`ok 1 name`,
`not ok 2 name # why`); a subtest is the same, indented by four spaces, before its own
result line in its parent. `parse` reads one document into results and says what is wrong
with the document itself (a plan not kept, a number out of order, a line it cannot read):
a test that stopped halfway must not read as passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_VERSION = re.compile(r"(?:KTAP|TAP) version (\d+)$")
_PLAN = re.compile(r"1\.\.(\d+)$")
_RESULT = re.compile(r"(not ok|ok) (\d+)(?: -)?(?: ([^#]*?))?\s*(?:#\s*(.*))?$")
_SUBTEST = re.compile(r"# Subtest: (.*)$")
INDENT = "    "


class KtapError(ValueError):
    """A document that does not follow KTAP."""


@dataclass
class KtapResult:
    """One test: its result line and, if it has them, its subtests."""

    number: int
    name: str
    ok: bool
    #: What follows '#': why a test failed, or a directive ("SKIP ...", "TODO ...").
    comment: str = ""
    subtests: list[KtapResult] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        return self.comment.upper().startswith("SKIP")

    def failures(self, prefix: str = "") -> list[str]:
        """Every failed leaf test as "parent.child: why"; a skip counts as a failure here:
        what cannot run is not proven."""
        path = f"{prefix}{self.name}"
        if self.subtests:
            found = [f for sub in self.subtests for f in sub.failures(path + ".")]
            if not self.ok and not found:
                found.append(f"{path}: {self.comment or 'not ok'}")
            return found
        if self.ok and not self.skipped:
            return []
        return [f"{path}: {self.comment or 'not ok'}"]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "ok": self.ok and not self.skipped}
        if self.comment:
            data["comment"] = self.comment
        if self.subtests:
            data["subtests"] = [s.to_json() for s in self.subtests]
        return data


def parse(text: str) -> list[KtapResult]:
    """The top-level results of one KTAP document; KtapError when it is malformed or cut
    short (fewer results than its plan)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    results, rest = _parse_level(lines, 0, "")
    if rest:
        raise KtapError(f"unexpected line after the last result: {rest[0].strip()!r}")
    return results


def _parse_level(lines: list[str], depth: int, name: str) -> tuple[list[KtapResult], list[str]]:
    """Parse a document at `depth` (indentation levels); returns (results, lines after)."""
    indent = INDENT * depth
    if not lines or not _VERSION.match(lines[0].removeprefix(indent)):
        raise KtapError(f"{name or 'document'}: no 'KTAP version' line"
                        + (f" (found {lines[0].strip()!r})" if lines else ""))
    at = 1
    plan = None
    # Diagnostic lines ("# Subtest: name") may come before the plan.
    while at < len(lines) and lines[at].startswith(indent + "#"):
        if match := _SUBTEST.match(lines[at].removeprefix(indent)):
            name = match[1].strip()
        at += 1
    if at < len(lines) and lines[at].startswith(indent) and (
            match := _PLAN.match(lines[at].removeprefix(indent))):
        plan = int(match[1])
        at += 1
    results: list[KtapResult] = []
    pending: list[KtapResult] = []
    sub_name = ""
    while at < len(lines) and (plan is None or len(results) < plan):
        line = lines[at]
        if not line.startswith(indent):
            break
        body = line.removeprefix(indent)
        if body.startswith(INDENT):  # a subtest's document
            subtests, remaining = _parse_level(lines[at:], depth + 1, sub_name)
            pending = subtests
            at = len(lines) - len(remaining)
            continue
        if match := _SUBTEST.match(body):
            sub_name = match[1].strip()
            at += 1
            continue
        if body.startswith("#"):
            at += 1
            continue
        match = _RESULT.match(body)
        if match is None:
            if _VERSION.match(body):
                break
            raise KtapError(f"{name or 'document'}: cannot read {body!r}")
        number = int(match[2])
        if number != len(results) + 1:
            raise KtapError(f"{name or 'document'}: test {number} where "
                            f"{len(results) + 1} was due")
        results.append(KtapResult(number=number, name=(match[3] or "").strip(),
                                  ok=match[1] == "ok", comment=(match[4] or "").strip(),
                                  subtests=pending))
        pending, sub_name = [], ""
        at += 1
    if plan is not None and len(results) != plan:
        raise KtapError(f"{name or 'document'}: {len(results)} of {plan} planned results "
                        "(cut short?)")
    return results, lines[at:]
