"""omatic.pfq against the contract (kmod/include/pfq/uapi.h, compiled here with gcc), the
ring reader on rings laid out by hand, BPF through tcpdump, and the fan-out grammar."""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from omatic.errors import UserError
from omatic.pfq import endpoint as pfq
from omatic.pfq import uapi
from omatic.pfq.config import CaptureConfig, apply_env, parse_config
from omatic.pfq.endpoint import Endpoint, PfqError, Ring, compile_filter, parse_records
from omatic.pfq.uapi import FRAME, LAYOUTS, RING_HEAD

pytestmark = pytest.mark.unit

KMOD_INCLUDE = Path(__file__).parent.parent / "kmod" / "include"
UAPI = KMOD_INCLUDE / "pfq" / "uapi.h"


# --- the contract -----------------------------------------------------------------------

def header_structs(text: str) -> dict[str, list[str]]:
    """Each struct of the header and its field names in order, read from the text."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    structs = {}
    for match in re.finditer(r"struct (\w+) \{(.*?)\};", text, re.S):
        structs[match[1]] = re.findall(r"^\s*(?:__[us]\d+|char)\s+(\w+)", match[2], re.M)
    return structs


def header_constants(text: str) -> set[str]:
    defines = set(re.findall(r"^#define\s+(PFQ_\w+)", text, re.M))
    return defines | set(re.findall(r"^\s*(PFQ_STEER_\w+)", text, re.M))


def test_python_mirrors_every_name_of_the_header() -> None:
    text = UAPI.read_text()
    assert header_constants(text) == set(uapi.CONSTANTS)
    assert header_structs(text) == {name: [f for f, _ in layout.fields]
                                    for name, layout in LAYOUTS.items()}


def test_sizes_offsets_and_ioctls_equal_the_compiled_header(tmp_path: Path) -> None:
    """gcc says what the header means; a change on either side fails here."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: it compiles uapi.h for this test")
    lines = []
    for name in uapi.CONSTANTS:
        lines.append(f'printf("%s %llu\\n", "{name}", (unsigned long long)({name}));')
    for name, layout in LAYOUTS.items():
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
        for field, _ in layout.fields:
            lines.append(f'printf("offsetof {name}.{field} %zu\\n", '
                         f'offsetof(struct {name}, {field}));')
    source = tmp_path / "uapi.c"
    source.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <pfq/uapi.h>\n"
                      "int main(void)\n{\n\t" + "\n\t".join(lines) + "\n\treturn 0;\n}\n")
    binary = tmp_path / "uapi"
    subprocess.run(["gcc", "-Wall", "-Werror", "-I", str(KMOD_INCLUDE), "-o", str(binary),
                    str(source)], check=True)
    got = dict(line.rsplit(" ", 1) for line in
               subprocess.run([str(binary)], check=True, capture_output=True,
                              text=True).stdout.splitlines())
    expected = {name: str(value) for name, value in uapi.CONSTANTS.items()}
    for name, layout in LAYOUTS.items():
        expected[f"sizeof {name}"] = str(layout.size)
        for field, _ in layout.fields:
            expected[f"offsetof {name}.{field}"] = str(layout.offset(field))
    assert got == expected


def test_ioctl_numbers_follow_linux_ioc() -> None:
    # _IOWR(0xF9, 1, 24 bytes), _IO(0xF9, 3): spelled out once by hand.
    assert uapi.PFQ_IOC_RING == 0xC018F901
    assert uapi.PFQ_IOC_LEAVE == 0x0000F903
    assert uapi.PFQ_IOC_STATS == 0x8020F909


# --- the ring ---------------------------------------------------------------------------

PAGE = 4096


def frame_bytes(seq: int, size: int) -> bytes:
    return bytes((seq + i) & 0xFF for i in range(size))


def make_ring(slots: int, caplen: int, tail: int, head: int,
              sizes: dict[int, int] | None = None) -> bytearray:
    """A ring as uapi.h lays it out, frames tail..head-1 published (frame n: n+60 bytes
    unless `sizes` says, timestamp 1000+n, ifindex 2, queue n%4, tci 0)."""
    slot_size = (FRAME.size + caplen + 7) // 8 * 8
    buf = bytearray(PAGE + slots * slot_size)
    struct.pack_into("<6I", buf, 0, uapi.PFQ_RING_MAGIC, uapi.RING_VERSION, slots, slot_size,
                     caplen, PAGE)
    struct.pack_into("<Q", buf, RING_HEAD.offset("tail"), tail)
    for n in range(tail, head):
        publish(buf, slots, slot_size, n, (sizes or {}).get(n, n + 60))
    return buf


def publish(buf: bytearray, slots: int, slot_size: int, n: int, size: int,
            flags: int = 0) -> None:
    """Frame n as its producer writes it: the slot, then its seq."""
    at = PAGE + (n % slots) * slot_size
    FRAME.struct.pack_into(buf, at, 1000 + n, size + 4, size, 2, n % 4, 0, flags, 0)
    buf[at + FRAME.size:at + FRAME.size + size] = frame_bytes(n, size)
    struct.pack_into("<I", buf, at + FRAME.offset("seq"), (n + 1) & 0xFFFFFFFF)


def test_ring_reads_published_frames_across_the_wrap() -> None:
    # A reader that consumed 5 frames of a 4-slot ring; frames 5..7 sit in slots 1, 2, 3
    # and frame 8 wrapped to slot 0.
    buf = make_ring(slots=4, caplen=128, tail=5, head=9)
    ring = Ring(buf)
    assert ring.ready()
    frames = []
    while (frame := ring.take()) is not None:
        frames.append(frame)
        # The tail is advanced after each slot is read, in the shared page itself.
        assert struct.unpack_from("<Q", buf, RING_HEAD.offset("tail"))[0] == 5 + len(frames)
    assert [(f.tstamp_ns, f.data) for f in frames] == [(1000 + n, frame_bytes(n, n + 60))
                                                      for n in range(5, 9)]
    assert [(f.wire_len, f.ifindex, f.queue, f.vlan_tci) for f in frames] == [
        (n + 64, 2, n % 4, None) for n in range(5, 9)]  # no PFQ_FRAME_VLAN: no tag
    # Slot 1 still holds frame 5 of the lap before: seq 6, not 10.
    assert not ring.ready() and ring.take() is None
    # Two producers publish out of order: frame 10 first, then 9. The reader waits at 9.
    slot_size = ring.slot_size
    publish(buf, 4, slot_size, 10, 70)
    assert not ring.ready() and ring.take() is None
    publish(buf, 4, slot_size, 9, 69)
    assert [f.tstamp_ns for f in iter(ring.take, None)] == [1009, 1010]
    ring.close()


def test_ring_skips_a_slot_published_empty() -> None:
    buf = make_ring(slots=4, caplen=128, tail=0, head=0)
    ring = Ring(buf)
    publish(buf, 4, ring.slot_size, 0, 0, flags=uapi.PFQ_FRAME_EMPTY)
    publish(buf, 4, ring.slot_size, 1, 61)
    assert [f.tstamp_ns for f in iter(ring.take, None)] == [1001]
    assert struct.unpack_from("<Q", buf, RING_HEAD.offset("tail"))[0] == 2
    ring.close()


def test_ring_sequence_numbers_wrap_at_32_bits() -> None:
    # Frame 2**32 - 1 is published with seq 0 (its number + 1, truncated).
    n = (1 << 32) - 1
    buf = make_ring(slots=4, caplen=128, tail=n, head=n + 2, sizes={n: 60, n + 1: 61})
    assert struct.unpack_from("<I", buf, PAGE + (n % 4) * Ring(buf).slot_size
                              + FRAME.offset("seq"))[0] == 0
    assert [f.tstamp_ns for f in iter(Ring(buf).take, None)] == [1000 + n, 1001 + n]


@pytest.mark.parametrize("damage, message", [
    (lambda b: struct.pack_into("<I", b, 0, 0x1234), "magic 0x1234"),
    (lambda b: struct.pack_into("<I", b, 4, 1), "version 1"),
    (lambda b: struct.pack_into("<I", b, 8, 1 << 20), "does not fit"),
])
def test_ring_refuses_a_header_it_does_not_know(damage: Callable[[bytearray], None],
                                                message: str) -> None:
    buf = make_ring(slots=4, caplen=128, tail=0, head=1)
    damage(buf)
    with pytest.raises(PfqError, match=message):
        Ring(buf)


def test_ring_refuses_a_nonsense_caplen() -> None:
    buf = make_ring(slots=4, caplen=64, tail=0, head=1, sizes={0: 64})
    struct.pack_into("<I", buf, PAGE + FRAME.offset("caplen"), 65)
    with pytest.raises(PfqError, match="claims 65 bytes"):
        Ring(buf).take()


def test_read_records_are_back_to_back() -> None:
    data = b"".join(FRAME.struct.pack(7 + n, 100, 60 + n, 3, 1, 0x0064, 1, 0)
                    + frame_bytes(n, 60 + n) for n in range(3))
    frames = parse_records(data)
    assert [(f.tstamp_ns, f.wire_len, f.vlan_tci, f.data) for f in frames] == [
        (7 + n, 100, 0x64, frame_bytes(n, 60 + n)) for n in range(3)]
    with pytest.raises(PfqError, match="cut at byte"):
        parse_records(data[:-1])


# --- endpoints without /dev/pfq ---------------------------------------------------------

def test_a_missing_device_asks_whether_pfq_is_loaded(tmp_path: Path) -> None:
    with pytest.raises(PfqError, match=r"is pfq.ko loaded\?"):
        Endpoint(tmp_path / "pfq")


def test_ioctl_errors_name_the_operation_and_errno(tmp_path: Path) -> None:
    (tmp_path / "pfq").write_bytes(b"")
    with Endpoint(tmp_path / "pfq") as ep:
        with pytest.raises(PfqError, match=r"^join group 3: ENOTTY \(.*\): not an ioctl"):
            ep.join(3)
        with pytest.raises(UserError, match=r"group 64: expected 0\.\.63"):
            ep.join(64)
        with pytest.raises(UserError, match="unknown steering mode 'fast'"):
            ep.steer("fast")
        with pytest.raises(UserError, match="not a network device name"):
            ep.bind("a/b")
        with pytest.raises(UserError, match="BPF instruction out of range"):
            ep.set_filter([(0x10000, 0, 0, 0)])
        with pytest.raises(UserError, match="VLAN id 4096"):
            ep.set_vlan([4096])
    assert ep.fd == -1


@pytest.mark.parametrize("err, hint", [
    (errno.EPERM, "EPERM (Operation not permitted): needs CAP_NET_RAW"),
    (errno.EINVAL, "EINVAL (Invalid argument): the kernel refused it: see dmesg"),
])
def test_error_hints(err: int, hint: str) -> None:
    message = str(PfqError.of("bind eth0", OSError(err, os.strerror(err))))
    assert message.startswith(f"bind eth0: {hint}")


def test_endpoint_records_wait_then_end_on_timeout(tmp_path: Path) -> None:
    """records() on a fake ring: what is published, then the wait times out."""
    (tmp_path / "pfq").write_bytes(b"")
    buf = make_ring(slots=8, caplen=128, tail=6, head=10)
    with Endpoint(tmp_path / "pfq") as ep:
        ep._ring = Ring(buf)  # the seam: the mapping of a real endpoint
        got = list(ep.frames(timeout=0.05))
    assert got == [(1000 + n, frame_bytes(n, n + 60)) for n in range(6, 10)]
    assert struct.unpack_from("<Q", buf, RING_HEAD.offset("tail"))[0] == 10


# --- BPF --------------------------------------------------------------------------------

def test_compile_filter_runs_tcpdump() -> None:
    program = compile_filter("udp and dst port 9", snaplen=2048)
    assert len(program) > 4
    assert program[0] == (0x28, 0, 0, 12)  # ldh [12]: the ethertype
    assert (0x06, 0, 0, 2048) in program and (0x06, 0, 0, 0) in program  # accept, refuse


def test_compile_filter_reports_tcpdumps_message() -> None:
    with pytest.raises(UserError, match=r"filter 'udp and dst prt 9': .*unknown host 'prt'"):
        compile_filter("udp and dst prt 9")


def test_compile_filter_takes_no_option_for_an_expression() -> None:
    with pytest.raises(UserError, match="filter '-w /tmp/x'"):
        compile_filter("-w /tmp/x")


def test_compile_filter_without_tcpdump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(UserError, match="needs tcpdump"):
        compile_filter("udp")


# --- the fan-out grammar ----------------------------------------------------------------

CONFIG = """\
# the paper's example, more or less
def_group = 11
caplen = 128   # bytes
fanout = hash
fanout@3 = rr
fanout @ 4 = lb
group_eth0 = 3
group_eth1.100 = 4

"""


def test_parse_config() -> None:
    config = parse_config(CONFIG, "pcap.conf")
    assert config.def_group == 11 and config.caplen == 128
    assert dict(config.fanout) == {None: "hash", 3: "rr", 4: "rr"}
    assert dict(config.groups) == {"eth0": 3, "eth1.100": 4}
    # @group scoping: a group's own fanout, else the plain one.
    assert config.group_of(["eth0"]) == 3 and config.steer_of(3) == "rr"
    assert config.group_of(["eth2"]) == 11 and config.steer_of(11) == "hash"
    assert config.group_of(["eth0", "eth2"]) == 3
    with pytest.raises(UserError, match="different groups"):
        config.group_of(["eth0", "eth1.100"])
    assert CaptureConfig().group_of(["eth0"]) is None


@pytest.mark.parametrize("line, message", [
    ("snaplen = 64", "unknown key 'snaplen'"),
    ("caplen@2 = 64", "caplen takes no @group"),
    ("caplen = 32", "caplen '32': expected 64..65535"),
    ("def_group = 64", "group '64': expected 0..63"),
    ("fanout@x = hash", "group 'x': expected 0..63"),
    ("fanout = rollover", "unknown steering mode 'rollover'"),
    ("fanout", "expected 'key\\[@group\\] = value'"),
    ("fanout =", "expected 'key\\[@group\\] = value'"),
    ("> steer_flow", "pfq-lang literals"),
    ("group_a/b = 1", "'a/b': not a network device name"),
])
def test_config_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(UserError, match=f"^pcap.conf:3: {message}"):
        parse_config(f"# two\ncaplen = 64\n{line}\n", "pcap.conf")


def test_environment_overrides_the_file() -> None:
    config = apply_env(parse_config(CONFIG, "pcap.conf"), {
        "PCAP_GROUP": "5", "PCAP_CAPLEN": "1500", "PCAP_FANOUT": "copy",
        "PCAP_GROUP_eth0": "7", "PCAP_GROUP_veth_a": "8", "HOME": "/root"})
    assert (config.def_group, config.caplen) == (5, 1500)
    assert dict(config.fanout) == {None: "copy"}  # over fanout@group too
    assert dict(config.groups) == {"eth0": 7, "eth1.100": 4, "veth_a": 8}
    assert apply_env(CaptureConfig(), {}) == CaptureConfig()
    with pytest.raises(UserError, match=r"^PCAP_GROUP_eth0: group 'x': expected 0\.\.63"):
        apply_env(CaptureConfig(), {"PCAP_GROUP_eth0": "x"})
    with pytest.raises(UserError, match=r"^PCAP_FANOUT: unknown steering mode"):
        apply_env(CaptureConfig(), {"PCAP_FANOUT": "steer_flow"})


def test_records_fall_back_to_read_off_x86(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the ring's plain loads are not enough, records() reads: a FIFO stands for
    /dev/pfq, holding two records from one read()."""
    monkeypatch.setattr(pfq.platform, "machine", lambda: "aarch64")
    os.mkfifo(tmp_path / "pfq")
    with Endpoint(tmp_path / "pfq") as ep:
        ep._info = pfq.RingInfo(8, 128, 152, PAGE, PAGE + 8 * 152)  # as PFQ_IOC_RING says
        os.write(ep.fd, b"".join(FRAME.struct.pack(n, 64, 64, 2, 0, 0, 0, 0) + frame_bytes(n, 64)
                                 for n in range(2)))
        got = list(ep.frames(timeout=0.05))
    assert got == [(n, frame_bytes(n, 64)) for n in range(2)]
