"""What a pcap application gets through PFQ, timed in the hook lab's guest: run there as
`python3 -S -m omatic.lab.pcapbench CONFIG` (bench/pcap.py asks omatic.lab.hooks for it).

Frames delivered per second to readers in user space, and frames dropped, for a burst of
UDP frames of 64 flows ten times larger than their rings (BURST): readers that cannot
keep up drop the rest, and their rate is what they can take; readers that keep up drop
nothing, and theirs is what the feed manages beside them. The frames are fed by the hook
test module from NAPI poll on CPU 0 (omatic.lab.rxbench's delivery measure, set-ups
taking turns). The readers are bench/reader.c's pcap kind: N processes doing with each
frame what `tcpdump -w /dev/null` does, on the libpcap of `pfq-omatic pcap`
(LD_LIBRARY_PATH), free to run on both vCPUs. Set-ups:

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
  cannot, and their rate is what N instances get done: where fan-out matters.

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
BUFFER_SIZE, SNAPLEN, TIMEOUT_MS = 256 << 10, 128, 1
#: Nanoseconds of work per frame of the `_work` set-ups' readers (READER_WORK_NS of
#: bench/reader.c), beside writing it: an application that looks into each frame, too
#: busy for one instance to keep up with the feed, so that their rate is the readers'.
WORK_NS = 20_000
#: The group of the fanned-out PFQ instances.
GROUP = 21
BOTH_CPUS = frozenset({0, 1})


def setups(reader: str, libdir: str) -> dict[str, Delivery]:
    """The set-ups of the module docstring, by name."""
    env = {**os.environ, "LD_LIBRARY_PATH": libdir}
    fan_out = {**env, "PCAP_GROUP": str(GROUP), "PCAP_FANOUT": "hash"}
    work = {"READER_WORK_NS": str(WORK_NS)}

    def pcap(device: str, n: int, timeout_ms: int = TIMEOUT_MS) -> list[str]:
        return [reader, "pcap", device, str(n), str(SNAPLEN), str(BUFFER_SIZE),
                str(timeout_ms)]

    return {
        "libpcap_af_packet_1": Delivery("pass", pcap(DEV, 1), env, BOTH_CPUS),
        "libpcap_af_packet_4_no_fanout": Delivery("pass", pcap(DEV, 4), env, BOTH_CPUS,
                                                  copies=4),
        "af_packet_4_fanout_hash": Delivery("pass", [*reader_argv(reader, "af_packet", 4, "hash"),
                                                     "dump"], reader_cpus=BOTH_CPUS),
        "pfq_tap_1": Delivery("tap", pcap(f"pfq:{DEV}", 1), env, BOTH_CPUS),
        "pfq_tap_4_hash": Delivery("tap", pcap(f"pfq:{DEV}", 4), fan_out, BOTH_CPUS),
        "pfq_tap_4_hash_no_timeout": Delivery("tap", pcap(f"pfq:{DEV}", 4, timeout_ms=0),
                                              fan_out, BOTH_CPUS),
        "pfq_capture_4_hash": Delivery("capture", pcap(f"pfq:{DEV}", 4), fan_out, BOTH_CPUS),
        "libpcap_af_packet_1_work": Delivery("pass", pcap(DEV, 1), {**env, **work},
                                             BOTH_CPUS),
        "af_packet_4_fanout_hash_work": Delivery(
            "pass", [*reader_argv(reader, "af_packet", 4, "hash"), "dump"],
            {**os.environ, **work}, BOTH_CPUS),
        "pfq_tap_4_hash_work": Delivery("tap", pcap(f"pfq:{DEV}", 4), {**fan_out, **work},
                                        BOTH_CPUS),
    }


#: Frames per burst: ten times the rings of the 4 PFQ readers (about 1600 slots each).
BURST = 65536


def bench(config: Config, burst: int = BURST, runs: int = 5) -> dict[str, Any]:
    with Watchdog() as watchdog:
        return {"burst": burst, "runs": runs, "buffer_size": BUFFER_SIZE,
                "snaplen": SNAPLEN,
                "delivery": delivery_of(setups(config["reader"], config["pcap_libdir"]),
                                        burst, runs, watchdog.progress)}


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:], bench))
