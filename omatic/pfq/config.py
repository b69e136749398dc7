"""The declarative configuration of PFQ's pcap fan-out: `key[@group] = value` lines and
PCAP_* environment overrides (Bonelli, Giordano, Procissi, "Enabling packet fan-out in the
libpcap library for parallel traffic processing", TMA 2017, Table I), as
`pfq-omatic capture --config` reads it. Standard library only, like the rest of omatic.pfq.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from omatic.errors import UserError
from omatic.pfq.endpoint import check_ifname, steer_mode
from omatic.pfq.uapi import PFQ_GROUPS


@dataclass(frozen=True)
class CaptureConfig:
    """PFQ's pcap fan-out configuration: a file of `key[@group] = value` lines, then the
    PCAP_* environment over it (Bonelli et al., TMA 2017, Table I)."""

    #: def_group / PCAP_GROUP: the group of a device that has no group_<dev>.
    def_group: int | None = None
    #: fanout[@group] / PCAP_FANOUT: steering modes by group; key None: every group
    #: without its own.
    fanout: Mapping[int | None, str] = field(default_factory=dict)
    #: caplen / PCAP_CAPLEN: bytes kept per frame.
    caplen: int | None = None
    #: group_<dev> / PCAP_GROUP_<dev>: a device's group.
    groups: Mapping[str, int] = field(default_factory=dict)
    #: Where it came from (a path, with its environment overrides), for messages.
    source: str = "the configuration"

    def group_of(self, devices: Sequence[str]) -> int | None:
        """The group of a capture on `devices`: their group_<dev> (which must agree),
        else def_group; None if neither says."""
        named = {self.groups[d] for d in devices if d in self.groups}
        if len(named) > 1:
            raise UserError(f"{self.source}: devices {'^'.join(devices)} are in different "
                            f"groups ({', '.join(map(str, sorted(named)))})")
        return named.pop() if named else self.def_group

    def steer_of(self, group: int) -> str | None:
        """The steering mode of `group`: its fanout@group, else the plain fanout."""
        return self.fanout.get(group, self.fanout.get(None))


class ConfigError(UserError):
    template = "{where}: {message}"


#: A number of the configuration: decimal (no leading zero) or 0x hex, as the C reader of
#: libpcap/pfq-config.c takes it.
_NUMBER = re.compile(r"0|[1-9][0-9]*|0[xX][0-9a-fA-F]+")


def _config_int(text: str, low: int, high: int, what: str, where: str) -> int:
    number = text.strip()
    value = int(number, 0) if _NUMBER.fullmatch(number) else low - 1
    if not low <= value <= high:
        raise ConfigError(f"{what} {text.strip()!r}: expected {low}..{high}", where=where)
    return value


def _config_steer(text: str, where: str) -> str:
    try:
        return steer_mode(text)
    except UserError as err:
        raise ConfigError(str(err), where=where) from None


_KEY = re.compile(r"(?P<name>[^@\s]+)\s*(?:@\s*(?P<group>\S+))?")


def parse_config(text: str, path: str | os.PathLike[str]) -> CaptureConfig:
    """Read a fan-out configuration: `key[@group] = value` per line, `#` starts a comment,
    blank lines are skipped. Keys: def_group, fanout[@group], caplen, group_<dev>; any
    other key, a @group where none belongs, or a bad value is an error naming the line.
    A later line overrides an earlier one. pfq-lang literals (`>` lines) are refused:
    fanout here names a steering mode."""
    def_group, caplen = None, None
    fanout: dict[int | None, str] = {}
    groups: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(">"):
            raise ConfigError("pfq-lang literals ('>' lines) are not supported: fanout "
                              "takes a steering mode", where=where)
        key, eq, value = line.partition("=")
        match, value = _KEY.fullmatch(key.strip()), value.strip()
        if not eq or not match or not value:
            raise ConfigError(f"expected 'key[@group] = value', not {line!r}", where=where)
        name, at = match["name"], match["group"]
        group = None if at is None else _config_int(at, 0, PFQ_GROUPS - 1, "group", where)
        lower = name.lower()
        if group is not None and lower != "fanout":
            raise ConfigError(f"{name} takes no @group (only fanout does)", where=where)
        if lower == "def_group":
            def_group = _config_int(value, 0, PFQ_GROUPS - 1, "group", where)
        elif lower == "caplen":
            caplen = _config_int(value, 64, 65535, "caplen", where)
        elif lower == "fanout":
            fanout[group] = _config_steer(value, where)
        elif lower.startswith("group_") and len(name) > 6:
            try:
                check_ifname(name[6:])
            except UserError as err:
                raise ConfigError(str(err), where=where) from None
            groups[name[6:]] = _config_int(value, 0, PFQ_GROUPS - 1, "group", where)
        else:
            raise ConfigError(f"unknown key {name!r} (expected def_group, fanout[@group], "
                              "caplen or group_<dev>)", where=where)
    return CaptureConfig(def_group=def_group, fanout=fanout, caplen=caplen, groups=groups,
                         source=str(path))


def apply_env(config: CaptureConfig, environ: Mapping[str, str]) -> CaptureConfig:
    """`config` with the environment's overrides (the paper's Table I): PCAP_GROUP sets
    def_group, PCAP_CAPLEN caplen, PCAP_GROUP_<dev> the group of <dev> (the name as it
    is: no '_' to ':' mapping), PCAP_FANOUT the steering of every group (it replaces
    fanout and fanout@group alike: the environment wins over the file)."""
    def_group, caplen = config.def_group, config.caplen
    fanout, groups = dict(config.fanout), dict(config.groups)
    if "PCAP_GROUP" in environ:
        def_group = _config_int(environ["PCAP_GROUP"], 0, PFQ_GROUPS - 1, "group",
                                "PCAP_GROUP")
    if "PCAP_FANOUT" in environ:
        fanout = {None: _config_steer(environ["PCAP_FANOUT"], "PCAP_FANOUT")}
    if "PCAP_CAPLEN" in environ:
        caplen = _config_int(environ["PCAP_CAPLEN"], 64, 65535, "caplen", "PCAP_CAPLEN")
    for var in sorted(environ):
        if var.startswith("PCAP_GROUP_") and len(var) > len("PCAP_GROUP_"):
            dev = var[len("PCAP_GROUP_"):]
            try:
                check_ifname(dev)
            except UserError as err:
                raise ConfigError(str(err), where=var) from None
            groups[dev] = _config_int(environ[var], 0, PFQ_GROUPS - 1, "group", var)
    return replace(config, def_group=def_group, fanout=fanout, caplen=caplen, groups=groups)
