"""Rewrite rules: which kernel receive entry point becomes which PFQ hook.

One TOML file per entry point in `patches/`. The PFQ module exports exactly the hooks the
rules name (a test checks both agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from omatic.data import PATCHES_DIR, load_toml_dir
from omatic.errors import RuleError
from omatic.versions import version_key

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VERSION = re.compile(r"\d+\.\d+(\.\d+)?\Z")


@dataclass(frozen=True)
class Rule:
    #: File the rule came from (set by the loader).
    path: Path
    #: File stem; by convention the callee's name.
    name: str
    #: The kernel function drivers call, e.g. "netif_receive_skb".
    callee: str
    #: The PFQ hook that replaces it, with the same signature, e.g. "pfq_netif_receive_skb".
    hook: str
    #: Number of arguments of a call; a call with another count is reported, not rewritten.
    arity: int
    #: First kernel release where the callee exists ("2.6.12").
    since: str
    #: First kernel release where it no longer exists, or "" while it still does.
    until: str = ""
    #: "rewrite" the sites, or only "report" them (when the hook cannot stand in safely).
    action: str = "rewrite"
    #: Why, shown in reports; required when action is "report".
    reason: str = ""
    #: Free text: what the entry point is, and the kernel commit that changed it if any.
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for key in ("callee", "hook"):
            if not _IDENT.match(getattr(self, key)):
                raise ValueError(f"{key} {getattr(self, key)!r} is not a C identifier")
        if self.arity < 0 or self.arity > 8:
            raise ValueError(f"bad arity {self.arity} (expected 0..8)")
        for key in ("since", "until"):
            value = getattr(self, key)
            if value and not _VERSION.match(value):
                raise ValueError(f"{key} {value!r} is not a kernel release like '5.18'")
        if self.action not in ("rewrite", "report"):
            raise ValueError(f"action {self.action!r} is neither 'rewrite' nor 'report'")
        if self.action == "report" and not self.reason:
            raise ValueError("a 'report' rule needs a reason")

    def exists_in(self, release: str) -> bool:
        """Whether the callee exists in kernel `release` ('6.1.0-56-amd64')."""
        key = version_key(release)
        if key < version_key(self.since):
            return False
        return not (self.until and key >= version_key(self.until))


def load_rules(folder: Path = PATCHES_DIR) -> list[Rule]:
    """All rules of `folder`; raises RuleError naming the file on any malformed one."""
    rules = load_toml_dir(folder, Rule)
    if not rules:
        raise RuleError("no rewrite rules (*.toml) found", path=folder)
    seen: dict[str, Rule] = {}
    for rule in rules:
        if rule.callee in seen:
            raise RuleError(f"callee {rule.callee!r} is also in {seen[rule.callee].path.name}",
                            path=rule.path)
        seen[rule.callee] = rule
    return rules
