"""KTAP read on the host: results, subtests, and documents that are cut short or malformed."""

from __future__ import annotations

import re

import pytest

from omatic.lab.hooks import HookSession
from omatic.lab.ktap import KtapError, parse

pytestmark = pytest.mark.unit

DOCUMENT = """\
KTAP version 1
1..2
    KTAP version 1
    # Subtest: netif_rx
    1..3
    ok 1 pass
    not ok 2 tap # stack: 3 frames reached it, expected 48
    ok 3 capture # SKIP no ring
not ok 1 netif_rx
    KTAP version 1
    # Subtest: napi_gro_receive
    1..1
    ok 1 pass
ok 2 napi_gro_receive
"""


def test_results_and_subtests() -> None:
    first, second = parse(DOCUMENT)
    assert (first.number, first.name, first.ok) == (1, "netif_rx", False)
    assert [(s.name, s.ok) for s in first.subtests] == [("pass", True), ("tap", False),
                                                         ("capture", True)]
    assert first.subtests[1].comment == "stack: 3 frames reached it, expected 48"
    # A skip is not a pass: what could not run is not proven.
    assert first.failures() == ["netif_rx.tap: stack: 3 frames reached it, expected 48",
                                "netif_rx.capture: SKIP no ring"]
    assert second.ok and second.failures() == []
    assert second.to_json() == {"name": "napi_gro_receive", "ok": True,
                                "subtests": [{"name": "pass", "ok": True}]}


def test_a_parent_failing_with_passing_subtests_still_fails() -> None:
    text = "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 a\nnot ok 1 t # oops\n"
    (result,) = parse(text)
    assert result.failures() == ["t: oops"]


@pytest.mark.parametrize(("text", "message"), [
    ("1..1\nok 1 a\n", "no 'KTAP version' line"),
    ("KTAP version 1\n1..3\nok 1 a\nok 2 b\n", "2 of 3 planned results (cut short?)"),
    ("KTAP version 1\n1..2\nok 1 a\nok 3 b\n", "test 3 where 2 was due"),
    ("KTAP version 1\n1..1\nokay 1 a\n", "cannot read 'okay 1 a'"),
    (("KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: s\n    1..2\n    ok 1 a\n"
      "ok 1 s\n"), "s: 1 of 2 planned results"),
    ("KTAP version 1\n1..1\nok 1 a\nok 2 b\n", "unexpected line after the last result"),
])
def test_malformed_or_cut_short(text: str, message: str) -> None:
    with pytest.raises(KtapError, match=re.escape(message)):
        parse(text)


def test_the_console_reader_keeps_each_document() -> None:
    session = HookSession()
    for line in ["noise", "OMATIC-KTAP-BEGIN hooks", "KTAP version 1", "1..1", "ok 1 a",
                 "OMATIC-KTAP-END hooks", "OMATIC-DMESG [ 1.0] WARNING: x",
                 'OMATIC {"event":"end"}']:
        session.feed(line)
    assert session.documents == {"hooks": "KTAP version 1\n1..1\nok 1 a"}
    assert session.dmesg == ["[ 1.0] WARNING: x"] and session.ended
