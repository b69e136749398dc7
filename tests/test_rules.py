"""The rewrite rules in patches/ load, and malformed ones are refused naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from omatic.data import PATCHES_DIR
from omatic.errors import RuleError
from omatic.rules import Rule, load_rules

pytestmark = pytest.mark.unit

EXPECTED_HOOKS = {
    "netif_receive_skb": "pfq_netif_receive_skb",
    "netif_receive_skb_list": "pfq_netif_receive_skb_list",
    "napi_gro_receive": "pfq_gro_receive",
    "napi_gro_frags": "pfq_gro_frags",
    "netif_rx": "pfq_netif_rx",
    "netif_rx_ni": "pfq_netif_rx_ni",
    "netif_rx_any_context": "pfq_netif_rx_any_context",
}


def test_every_rule_file_loads(rules: list[Rule]) -> None:
    assert len(rules) == len(list(PATCHES_DIR.glob("*.toml")))
    assert {r.callee: r.hook for r in rules} == EXPECTED_HOOKS
    for rule in rules:
        assert rule.name == rule.callee, f"{rule.path.name} should be named after its callee"


def test_kernels_where_callees_exist(rules: list[Rule]) -> None:
    by_callee = {r.callee: r for r in rules}
    assert by_callee["netif_rx_ni"].exists_in("5.17.0")
    assert not by_callee["netif_rx_ni"].exists_in("6.1.0-56-amd64")
    assert by_callee["netif_receive_skb_list"].exists_in("6.12.117+deb12-amd64")
    assert not by_callee["netif_receive_skb_list"].exists_in("4.18")


GOOD = 'callee = "netif_rx"\nhook = "pfq_netif_rx"\narity = 1\nsince = "2.6.12"\n'


@pytest.mark.parametrize(("text", "message"), [
    (GOOD + 'colour = "blue"\n', "unknown key 'colour'"),
    (GOOD.replace("arity = 1", "arity = 12"), "bad arity 12"),
    (GOOD.replace("arity = 1", 'arity = "one"'), "key 'arity' has the wrong type"),
    (GOOD.replace('hook = "pfq_netif_rx"\n', ""), "missing key 'hook'"),
    (GOOD.replace('"pfq_netif_rx"', '"pfq-netif-rx"'), "is not a C identifier"),
    (GOOD + 'action = "report"\n', "a 'report' rule needs a reason"),
    (GOOD + 'until = "soon"\n', "is not a kernel release"),
    (GOOD + "[broken", "netif_rx.toml"),
])
def test_malformed_rule_is_refused_naming_the_file(tmp_path: Path, text: str,
                                                   message: str) -> None:
    (tmp_path / "netif_rx.toml").write_text(text)
    with pytest.raises(RuleError) as err:
        load_rules(tmp_path)
    assert "netif_rx.toml" in str(err.value)
    assert message in str(err.value)


def test_two_rules_for_one_callee_are_refused(tmp_path: Path) -> None:
    shutil.copy(PATCHES_DIR / "netif_rx.toml", tmp_path / "netif_rx.toml")
    shutil.copy(PATCHES_DIR / "netif_rx.toml", tmp_path / "netif_rx_again.toml")
    with pytest.raises(RuleError, match=r"also in netif_rx\.toml"):
        load_rules(tmp_path)


def test_an_empty_rules_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="no rewrite rules"):
        load_rules(tmp_path)
