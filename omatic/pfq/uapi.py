"""pfq.ko's user-space contract, mirrored: `kmod/include/pfq/uapi.h`'s constants, its
struct layouts (with `struct`) and its ioctl numbers (with Linux's `_IOC` formula);
tests/test_pfq_user.py compiles the header to prove the two agree. The standard library
only: it runs in a minimal guest whose python3 has no third-party packages.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The character device of pfq.ko.
DEVICE = Path("/dev/pfq")

# --- uapi.h: constants ------------------------------------------------------------------

PFQ_GROUPS = 64
PFQ_GROUP_ENDPOINTS = 64
#: PFQ_IOC_JOIN's group id for a group of one's own (the lowest with no endpoint).
PFQ_GROUP_ANY = 0xFFFFFFFF
PFQ_RING_MAGIC = 0x52514650
PFQ_VLAN_IDS = 4096
#: Slots start on their own cache line (slot_size is a multiple of it).
PFQ_SLOT_ALIGN = 64
#: struct pfq_frame.flags: vlan_tci is a tag the NIC stripped; the slot holds no frame.
PFQ_FRAME_VLAN = 1
PFQ_FRAME_EMPTY = 2
#: enum pfq_steer, by the names `steer()` takes.
STEER_MODES = {"copy": 0, "rr": 1, "hash": 2, "cpu": 3, "queue": 4, "rnd": 5}
PFQ_STEER_MAX = 6
#: Or'ed into PFQ_IOC_STEER's mode, and pfq_filter.flags: the group's first member decides
#: the setting; another one asking for something else gets EBUSY.
PFQ_STEER_SHARED = 0x80000000
PFQ_FILTER_SHARED = 1
#: Other names a fan-out may give a steering mode: Linux's PACKET_FANOUT_* names, which
#: the paper's library takes for AF_PACKET sockets (LB is round robin, QM the recorded
#: queue mapping). PACKET_FANOUT_ROLLOVER has no equivalent and is refused.
STEER_ALIASES = {"lb": "rr", "qm": "queue", "random": "rnd", "sym": "hash"}
#: BPF_MAXINSNS: the longest program PFQ_IOC_FILTER takes.
BPF_MAXINSNS = 4096
IFNAMSIZ = 16
#: The one version of the ring layout this reader knows (PFQ_RING_VERSION): frames
#: published per slot by their `seq`, no shared head.
RING_VERSION = 2

# Linux's _IOC encoding (asm-generic/ioctl.h, which x86_64 uses): nr 8 bits, type 8,
# size 14, direction 2.
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (kind << 8) | nr


@dataclass(frozen=True)
class Layout:
    """A C struct of uapi.h as `struct` sees it: its fields in order, each with the
    format of its bytes (x86_64: little endian, and the header pads by hand)."""

    name: str
    fields: tuple[tuple[str, str], ...]

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct("<" + "".join(fmt for _, fmt in self.fields))

    @property
    def size(self) -> int:
        return self.struct.size

    def offset(self, name: str) -> int:
        """Where field `name` starts, as offsetof() says."""
        formats = [fmt for _, fmt in self.fields[:[n for n, _ in self.fields].index(name)]]
        return struct.calcsize("<" + "".join(formats))


RING_HEAD = Layout("pfq_ring_head", (
    ("magic", "I"), ("version", "I"), ("slots", "I"), ("slot_size", "I"), ("caplen", "I"),
    ("data_offset", "I"), ("pad0", "5Q"), ("pad_head", "Q"), ("pad1", "7Q"), ("tail", "Q"),
    ("wake_after", "I"), ("pad2", "I")))
FRAME = Layout("pfq_frame", (
    ("tstamp_ns", "Q"), ("len", "I"), ("caplen", "I"), ("ifindex", "I"), ("queue", "H"),
    ("vlan_tci", "H"), ("flags", "I"), ("seq", "I")))
RING_INFO = Layout("pfq_ring_info", (
    ("slots", "I"), ("caplen", "I"), ("slot_size", "I"), ("data_offset", "I"),
    ("mmap_size", "Q")))
BIND = Layout("pfq_bind", (("ifname", f"{IFNAMSIZ}s"), ("queue", "i"), ("pad", "I")))
FILTER = Layout("pfq_filter", (("len", "I"), ("flags", "I"), ("insns", "Q")))
VLAN = Layout("pfq_vlan", (("enabled", "I"), ("untagged", "I"),
                           ("vids", f"{PFQ_VLAN_IDS // 64}Q")))
ENDPOINT_STATS = Layout("pfq_endpoint_stats", (
    ("received", "Q"), ("delivered", "Q"), ("dropped", "Q"), ("group", "i"), ("pad", "I")))
#: Every struct of uapi.h, by its C name.
LAYOUTS = {layout.name: layout for layout in (RING_HEAD, FRAME, RING_INFO, BIND, FILTER,
                                               VLAN, ENDPOINT_STATS)}
#: struct sock_filter of <linux/filter.h>: code, jt, jf, k.
SOCK_FILTER = struct.Struct("<HBBI")

PFQ_IOC_MAGIC = 0xF9
PFQ_IOC_RING = _ioc(_IOC_READ | _IOC_WRITE, PFQ_IOC_MAGIC, 1, RING_INFO.size)
PFQ_IOC_JOIN = _ioc(_IOC_WRITE, PFQ_IOC_MAGIC, 2, 4)
PFQ_IOC_LEAVE = _ioc(_IOC_NONE, PFQ_IOC_MAGIC, 3, 0)
PFQ_IOC_BIND = _ioc(_IOC_WRITE, PFQ_IOC_MAGIC, 4, BIND.size)
PFQ_IOC_UNBIND = _ioc(_IOC_WRITE, PFQ_IOC_MAGIC, 5, BIND.size)
PFQ_IOC_STEER = _ioc(_IOC_WRITE, PFQ_IOC_MAGIC, 6, 4)
PFQ_IOC_FILTER = _ioc(_IOC_WRITE, PFQ_IOC_MAGIC, 7, FILTER.size)
PFQ_IOC_VLAN = _ioc(_IOC_WRITE, PFQ_IOC_MAGIC, 8, VLAN.size)
PFQ_IOC_STATS = _ioc(_IOC_READ, PFQ_IOC_MAGIC, 9, ENDPOINT_STATS.size)

#: Every #define and enumerator of uapi.h, by its C name (what the header test compares).
CONSTANTS = {
    "PFQ_GROUPS": PFQ_GROUPS, "PFQ_GROUP_ENDPOINTS": PFQ_GROUP_ENDPOINTS,
    "PFQ_GROUP_ANY": PFQ_GROUP_ANY, "PFQ_STEER_SHARED": PFQ_STEER_SHARED,
    "PFQ_FILTER_SHARED": PFQ_FILTER_SHARED,
    "PFQ_RING_MAGIC": PFQ_RING_MAGIC, "PFQ_VLAN_IDS": PFQ_VLAN_IDS,
    "PFQ_RING_VERSION": RING_VERSION, "PFQ_FRAME_VLAN": PFQ_FRAME_VLAN,
    "PFQ_FRAME_EMPTY": PFQ_FRAME_EMPTY, "PFQ_SLOT_ALIGN": PFQ_SLOT_ALIGN,
    **{f"PFQ_STEER_{name.upper()}": value for name, value in STEER_MODES.items()},
    "PFQ_STEER_MAX": PFQ_STEER_MAX, "PFQ_IOC_MAGIC": PFQ_IOC_MAGIC,
    "PFQ_IOC_RING": PFQ_IOC_RING, "PFQ_IOC_JOIN": PFQ_IOC_JOIN,
    "PFQ_IOC_LEAVE": PFQ_IOC_LEAVE, "PFQ_IOC_BIND": PFQ_IOC_BIND,
    "PFQ_IOC_UNBIND": PFQ_IOC_UNBIND, "PFQ_IOC_STEER": PFQ_IOC_STEER,
    "PFQ_IOC_FILTER": PFQ_IOC_FILTER, "PFQ_IOC_VLAN": PFQ_IOC_VLAN,
    "PFQ_IOC_STATS": PFQ_IOC_STATS,
}

Program = Sequence[tuple[int, int, int, int]]
