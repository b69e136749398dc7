"""Version numbers compared as numbers: kernel releases, rule bounds, QEMU versions."""

from __future__ import annotations

import re


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a version by all its numbers: 6.1 before 6.12 before 7.2, -9 before -10;
    "6.1.0-56-amd64" -> (6, 1, 0, 56), so a release is at or past its series ("6.1")."""
    return tuple(int(x) for x in re.findall(r"\d+", version))
