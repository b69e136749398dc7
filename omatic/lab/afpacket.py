"""AF_PACKET as tcpdump, Suricata and Zeek use it: a socket with a TPACKET_V3 ring bound to
one device, alone or as one of N in a PACKET_FANOUT group. The peer PFQ is measured
against (omatic.lab.groupcheck.bench); it runs in the guest, so the standard library only.

Constants and layouts are Linux's uapi (include/uapi/linux/if_packet.h, if_ether.h): a
ring of blocks, each handed to user space whole (TP_STATUS_USER) when full or when its
timeout (`tp_retire_blk_tov`) passes, and handed back by writing TP_STATUS_KERNEL.
"""

from __future__ import annotations

import mmap
import select
import socket
import struct
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
TPACKET_V3 = 2
#: PACKET_FANOUT modes, by the names PFQ's steering takes as aliases.
FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "rnd": 4, "qm": 5}
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
#: struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov,
#: sizeof_priv, feature_req_word.
REQ3 = struct.Struct("=7I")
#: struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1's block_status,
#: num_pkts, offset_to_first_pkt, blk_len, seq_num, ts_first_pkt, ts_last_pkt.
BLOCK_DESC = struct.Struct("=IIIIIIQIIII")
#: struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt.
STATS_V3 = struct.Struct("=III")


@dataclass(frozen=True)
class RingSize:
    """A TPACKET_V3 ring: `blocks` blocks of `block_size` bytes; `retire_ms` is how long a
    block that is not full waits before user space gets it."""

    block_size: int = 1 << 16
    blocks: int = 64
    frame_size: int = 1 << 11
    retire_ms: int = 10

    def request(self) -> bytes:
        frames = self.block_size // self.frame_size * self.blocks
        return REQ3.pack(self.block_size, self.blocks, self.frame_size, frames,
                         self.retire_ms, 0, 0)


class PacketSocket:
    """One AF_PACKET socket with a TPACKET_V3 ring, bound to `dev` (None: every device);
    with `fanout`, a member of PACKET_FANOUT group `fanout` = (id, mode name)."""

    def __init__(self, dev: str | None, size: RingSize = RingSize(),
                 fanout: tuple[int, str] | None = None) -> None:
        self.size = size
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, size.request())
            self.map = mmap.mmap(self.sock.fileno(), size.block_size * size.blocks,
                                 mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if dev is not None:
                self.sock.bind((dev, ETH_P_ALL))
            if fanout is not None:
                group, mode = fanout
                self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT,
                                     (group & 0xFFFF) | FANOUT_MODES[mode] << 16)
        except BaseException:
            self.sock.close()
            raise
        self.block = 0

    def take(self) -> int:
        """The frames of every block user space holds, handed back; how many."""
        count = 0
        while True:
            at = self.block * self.size.block_size
            desc = BLOCK_DESC.unpack_from(self.map, at)
            if not desc[2] & TP_STATUS_USER:
                return count
            count += desc[3]
            struct.pack_into("=I", self.map, at + 8, TP_STATUS_KERNEL)
            self.block = (self.block + 1) % self.size.blocks

    def stats(self) -> tuple[int, int]:
        """(frames, drops) since the last call, as the kernel counts them."""
        packets, drops, _ = STATS_V3.unpack(
            self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, STATS_V3.size))
        return packets, drops

    def close(self) -> None:
        self.map.close()
        self.sock.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(sockets: list[PacketSocket], want: int, timeout: float) -> int:
    """Take blocks from `sockets` until `want` frames came or `timeout` seconds passed
    (a block not full is retired after its timeout); how many came."""
    got = 0
    end = time.monotonic() + timeout
    while got < want and (left := end - time.monotonic()) > 0:
        select.select([s.sock for s in sockets], [], [], min(left, 0.05))
        got += sum(s.take() for s in sockets)
    return got
