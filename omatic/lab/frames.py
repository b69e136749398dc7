"""Ethernet frames the lab injects, the guest's replies it recognises, and pcap streams.

The lab talks to its guest over QEMU's dgram netdev: each UDP datagram on 127.0.0.1 is one
Ethernet frame. Inside the guest only TEST-NET-1 (192.0.2.0/24, RFC 5737) is used: the host
is 192.0.2.1, the guest 192.0.2.2. Every frame built here is at least 60 bytes (the
Ethernet minimum without FCS) so that no NIC model pads it and a capture can be compared
with what was sent byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: The MAC the guest's NIC gets (-device ...,mac=), and the one the host pretends to have.
GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("020000000001")
HOST_IP = bytes([192, 0, 2, 1])
GUEST_IP = bytes([192, 0, 2, 2])
BROADCAST = b"\xff" * 6
#: The UDP port the injected UDP frames go to (discard); the guest answers nothing on it.
UDP_PORT = 9
#: The smallest frame without FCS; shorter ones would be padded by some NIC models.
MIN_FRAME = 60

ETH_IP, ETH_ARP = 0x0800, 0x0806


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ip_text(ip: bytes) -> str:
    return ".".join(str(b) for b in ip)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _pad(frame: bytes) -> bytes:
    return frame + bytes(max(0, MIN_FRAME - len(frame)))


def _ipv4(proto: int, ident: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0, 64,
                         proto, 0, HOST_IP, GUEST_IP)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def arp_request() -> bytes:
    """Who has 192.0.2.2? Tell 192.0.2.1 (broadcast)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, 1, HOST_MAC, HOST_IP, bytes(6),
                      GUEST_IP)
    return _pad(BROADCAST + HOST_MAC + struct.pack("!H", ETH_ARP) + arp)


def echo_request(seq: int) -> bytes:
    """ICMP echo request 192.0.2.1 -> 192.0.2.2, 98 bytes; `seq` in the id and payload."""
    icmp = struct.pack("!BBHHHI", 8, 0, 0, 0x7071, seq & 0xFFFF, seq) + bytes(52)
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return GUEST_MAC + HOST_MAC + struct.pack("!H", ETH_IP) + _ipv4(1, seq, icmp)


def udp_payload(seq: int) -> bytes:
    """The known payload of UDP frame `seq`: a tag, the number, a pattern."""
    return b"pfq-omatic %08d " % seq + bytes((seq + i) & 0xFF for i in range(40))


def udp_frame(seq: int, sport: int = 40000) -> bytes:
    """UDP 192.0.2.1:`sport` -> 192.0.2.2:9 carrying `udp_payload(seq)` (checksum 0:
    none)."""
    payload = udp_payload(seq)
    udp = struct.pack("!HHHH", sport, UDP_PORT, 8 + len(payload), 0) + payload
    return _pad(GUEST_MAC + HOST_MAC + struct.pack("!H", ETH_IP) + _ipv4(17, seq, udp))


@dataclass(frozen=True)
class Burst:
    """The frames of one lab phase and what the guest's stack must answer to them."""

    #: In the order they are sent.
    frames: tuple[bytes, ...]
    #: How many are ARP requests (each answered by one ARP reply).
    arp: int
    #: How many are ICMP echo requests (each answered by one echo reply).
    icmp: int
    #: How many are UDP frames to the discard port (answered by nothing we count).
    udp: int


def burst(count: int, first_seq: int = 0) -> Burst:
    """`count` frames: every fifth an ARP request, then two echo requests, two UDP frames.
    It starts with an ARP request so the guest knows the host before it must answer."""
    frames: list[bytes] = []
    kinds = {"arp": 0, "icmp": 0, "udp": 0}
    for i in range(count):
        seq = first_seq + i
        kind = ("arp", "icmp", "icmp", "udp", "udp")[i % 5]
        kinds[kind] += 1
        frames.append(arp_request() if kind == "arp" else
                      echo_request(seq) if kind == "icmp" else udp_frame(seq))
    return Burst(frames=tuple(frames), **kinds)


#: The source port of the first flow of `flows_burst`; flow i comes from FLOW_PORT + i.
FLOW_PORT = 41000


def flows_burst(flows: int, per_flow: int, first_seq: int = 0) -> Burst:
    """`flows` UDP flows to the discard port, `per_flow` frames each, interleaved: the
    fan-out phase's traffic (a flow is its source port, see `flow_of`)."""
    frames = tuple(udp_frame(first_seq + i * flows + f, FLOW_PORT + f)
                   for i in range(per_flow) for f in range(flows))
    return Burst(frames=frames, arp=0, icmp=0, udp=len(frames))


def flow_of(frame: bytes) -> int:
    """The flow of a `flows_burst` frame: its source port less FLOW_PORT."""
    ihl = (frame[14] & 0x0F) * 4
    return int(struct.unpack_from("!H", frame, 14 + ihl)[0]) - FLOW_PORT


def classify(frame: bytes) -> str:
    """What the guest sent: "arp-reply", "echo-reply" (to the host, from the guest), or
    "other"."""
    if len(frame) < 42 or frame[0:6] != HOST_MAC or frame[6:12] != GUEST_MAC:
        return "other"
    ethertype = frame[12:14]
    if (ethertype == struct.pack("!H", ETH_ARP) and frame[20:22] == b"\x00\x02"
            and frame[28:32] == GUEST_IP and frame[38:42] == HOST_IP):
        return "arp-reply"
    if ethertype == struct.pack("!H", ETH_IP) and frame[23] == 1:
        ihl = (frame[14] & 0x0F) * 4
        if frame[26:30] == GUEST_IP and len(frame) > 14 + ihl and frame[14 + ihl] == 0:
            return "echo-reply"
    return "other"


class PcapError(ValueError):
    """A pcap stream that cannot be read."""


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a classic pcap stream (either byte order, µs or ns timestamps)."""
    if len(data) < 24:
        raise PcapError(f"{len(data)} bytes: shorter than a pcap header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise PcapError(f"bad magic {magic.hex()}")
    frames = []
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise PcapError(f"truncated record header at byte {offset}")
        _sec, _frac, caplen, _length = struct.unpack(order + "IIII", data[offset:offset + 16])
        offset += 16
        if offset + caplen > len(data):
            raise PcapError(f"truncated frame at byte {offset}")
        frames.append(data[offset:offset + caplen])
        offset += caplen
    return frames


def write_pcap(frames: list[bytes] | tuple[bytes, ...]) -> bytes:
    """A pcap stream (little endian, µs, Ethernet) of `frames`, timestamps zero: to keep
    what the lab sent beside what the guest captured."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for frame in frames:
        out.append(struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


def first_difference(sent: tuple[bytes, ...], got: list[bytes]) -> str:
    """"" when `got` equals `sent` frame for frame, else where they first differ."""
    if len(sent) != len(got):
        return f"{len(got)} frame(s) captured, {len(sent)} sent"
    for i, (a, b) in enumerate(zip(sent, got, strict=True)):
        if a != b:
            at = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))
            return (f"frame {i}: differs at byte {at} (sent {len(a)} bytes, captured "
                    f"{len(b)})")
    return ""

