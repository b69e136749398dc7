"""What a pcap application gets through PFQ, timed in the hook lab's guest: run there as
`python3 -S -m omatic.lab.pcapbench CONFIG` (bench/pcap.py asks omatic.lab.hooks for it).

Frames delivered per second to readers in user space, and frames dropped, for a burst of
UDP frames of 64 flows ten times larger than their rings (BURST): readers that cannot
keep up drop the rest, and their rate is what they can take; readers that keep up drop
nothing, and theirs is what the feed manages beside them. The frames are fed by the hook
test module from NAPI poll through DEV's two rx queues, one per vCPU, spread by flow as a
NIC's RSS spreads them on a machine of two cores (omatic.lab.rxbench's delivery measure,
set-ups taking turns). Fed from one CPU, the feed's whole cost falls on it: N readers
get what it leaves and the other CPU, one reader the other CPU, so the ratio of 4
instances to 1 is bounded by the feed (2 less twice its share of a CPU), not by the
readers (the `_one_queue` set-ups show it). The readers are bench/reader.c's pcap kind:
N processes doing with each frame what `tcpdump -w /dev/null` does, on the libpcap of
`pfq-omatic pcap` (LD_LIBRARY_PATH), free to run on both vCPUs. Set-ups:

- libpcap on DEV, which is libpcap's own TPACKET_V3 capture, the device in pass mode (as
  a stock driver's): 1 instance, and 4 with no fan-out (libpcap has none: each gets every
  frame, so they are handed 4 copies);
- 4 AF_PACKET sockets in a PACKET_FANOUT_HASH group, driven directly (bench/reader.c's
  afpacket kind, its rings as omatic.lab.rxbench's, writing each frame as pcap_dump()
  does), the most AF_PACKET offers for N;
- libpcap on pfq:DEV: 1 instance, and 4 started alike with PCAP_GROUP and
  PCAP_FANOUT=hash, the device in tap mode (the stack still gets every frame) and, for the
  4, in capture mode too; and the 4 in tap mode with no timeout, which pcap-pfq reads
  waking at each frame that finds a reader asleep, where with a timeout it wakes per
  share of the ring (libpcap/pcap-pfq.c's pfq_wait()): what the batched wake-up gives;
- `_work`: libpcap on DEV (1), the AF_PACKET fan-out group and pfq:DEV tap 4 hash again,
  each reader also busy WORK_NS with each frame. Readers that only write each frame keep
  up with the feed (the rate is then the feed's, as the CPU the readers leave it); these
  cannot, and their rate is what N instances get done: where fan-out matters;
- `_one_queue`: libpcap on DEV (1) and pfq:DEV tap 4 hash, the device fed through its
  first rx queue only, from CPU 0.

Rings alike in memory: a buffer of BUFFER_SIZE bytes for each pcap_t (libpcap sizes both
kinds of ring from it), a snapshot length that holds the whole frame. Standard library and
omatic only: the guest's python3 has nothing else. Prints one line, `OMATIC-BENCH {json}`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from omatic.lab.groupcheck import DEV, Config
from omatic.lab.rxbench import Delivery, Watchdog, bench_main, delivery_of, reader_argv

#: Bytes of ring per pcap_t (pcap_set_buffer_size), its snapshot length, and the
#: timeout (ms) after which a read returns what there is (TPACKET_V3 retires a block).
#: The timeout is a few of the kernel's ticks, so that both kinds of ring wake their
#: readers per batch, as tcpdump's 1000 ms does, while the end of a burst waits little.
#: At 1 ms, readers that keep up woke per 13 to 20 frames on pfq:DEV, which keeps the
#: timeout to the millisecond, and per several hundred on DEV, whose block timer counts
#: whole ticks (4 ms at HZ=250); those wake-ups took the CPU the feed shares with them.
BUFFER_SIZE, SNAPLEN, TIMEOUT_MS = 256 << 10, 128, 10
#: Nanoseconds of work per frame of the `_work` set-ups' readers (READER_WORK_NS of
#: bench/reader.c), beside writing it: an application that looks into each frame, too
#: busy for one instance to keep up with the feed, so that their rate is the readers'.
WORK_NS = 20_000
#: The group of the fanned-out PFQ instances.
GROUP = 21
BOTH_CPUS = frozenset({0, 1})
#: DEV's rx queues that feed it, one per vCPU (omatic.lab.rxbench.queue_feeds).
QUEUES = 2


def setups(reader: str, libdir: str) -> dict[str, Delivery]:
    """The set-ups of the module docstring, by name."""
    env = {**os.environ, "LD_LIBRARY_PATH": libdir}
    fan_out = {**env, "PCAP_GROUP": str(GROUP), "PCAP_FANOUT": "hash"}
    work = {"READER_WORK_NS": str(WORK_NS)}

    def pcap(device: str, n: int, timeout_ms: int = TIMEOUT_MS) -> list[str]:
        return [reader, "pcap", device, str(n), str(SNAPLEN), str(BUFFER_SIZE),
                str(timeout_ms)]

    def both(mode: str, argv: list[str], environ: dict[str, str], copies: int = 1
             ) -> Delivery:
        return Delivery(mode, argv, environ, BOTH_CPUS, copies, QUEUES)

    af_packet_4 = [*reader_argv(reader, "af_packet", 4, "hash"), "dump"]
    return {
        "libpcap_af_packet_1": both("pass", pcap(DEV, 1), env),
        "libpcap_af_packet_4_no_fanout": both("pass", pcap(DEV, 4), env, copies=4),
        "af_packet_4_fanout_hash": both("pass", af_packet_4, dict(os.environ)),
        "pfq_tap_1": both("tap", pcap(f"pfq:{DEV}", 1), env),
        "pfq_tap_4_hash": both("tap", pcap(f"pfq:{DEV}", 4), fan_out),
        "pfq_tap_4_hash_no_timeout": both("tap", pcap(f"pfq:{DEV}", 4, timeout_ms=0),
                                          fan_out),
        "pfq_capture_4_hash": both("capture", pcap(f"pfq:{DEV}", 4), fan_out),
        "libpcap_af_packet_1_work": both("pass", pcap(DEV, 1), {**env, **work}),
        "af_packet_4_fanout_hash_work": both("pass", af_packet_4, {**os.environ, **work}),
        "pfq_tap_4_hash_work": both("tap", pcap(f"pfq:{DEV}", 4), {**fan_out, **work}),
        "libpcap_af_packet_1_one_queue": Delivery("pass", pcap(DEV, 1), env, BOTH_CPUS),
        "pfq_tap_4_hash_one_queue": Delivery("tap", pcap(f"pfq:{DEV}", 4), fan_out,
                                             BOTH_CPUS),
    }


#: Frames per burst: ten times the rings of the 4 PFQ readers (about 1600 slots each).
BURST = 65536


def bench(config: Config, burst: int = BURST, runs: int = 8) -> dict[str, Any]:
    with Watchdog() as watchdog:
        return {"burst": burst, "runs": runs, "buffer_size": BUFFER_SIZE,
                "snaplen": SNAPLEN,
                "delivery": delivery_of(setups(config["reader"], config["pcap_libdir"]),
                                        burst, runs, watchdog.progress)}


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:], bench))
