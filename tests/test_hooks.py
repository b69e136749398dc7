"""Every PFQ hook proven in a guest: the hook test module (tests/hookmod) on each kernel,
and PFQ's groups through /dev/pfq with the frames it injects."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from guests import need_vm
from omatic.cli import main
from omatic.kernels.kernel import Kernel
from omatic.verify.modfile import KernelModule

ENTRY_POINTS = ["netif_receive_skb", "netif_rx", "napi_gro_receive", "napi_gro_frags",
                "netif_receive_skb_list"]
CASES = ["tap_unread", "capture_unread", "pass", "tap", "capture", "ring_full"]
GROUP_CHECKS = ["hash_4_endpoints", "rr_shares", "copy_everything", "bpf_udp_dst_port_9",
                "vlan_10", "queue_bind_and_steer", "cpu_and_rnd", "read_and_caplen",
                "other_namespace", "two_groups_one_device",
                "shared_settings_first_member_decides", "tap_feeds_stack_capture_does_not",
                "endpoint_closed_mid_burst", "killed_process_leaves", "endpoint_ring_full",
                "wake_after_a_batch", "two_cpus_one_ring", "unprivileged_eperm",
                "bad_requests_einval", "capture_cli_4_workers_hash", "refcount_back"]
SAFETY_CHECKS = ["user_namespace_root_eperm", "memlock_charged", "memory_counted_and_capped",
                 "read_racing_mmap_returns", "two_readers_never_read_0",
                 "pcap_concurrent_reads_whole", "pcap_kept_only_while_open",
                 "control_needs_cap_net_admin",
                 "no_grace_period_under_locks", "private_map_ioctl_groups_file",
                 "refcount_back"]
PCAP_CHECKS = ["libpcap_version_says_pfq", "tcpdump_exact_nanoseconds",
               "tcpdump_plain_device_af_packet", "pcap_next_ex_copies_the_frame",
               "tcpdump_fanout_4_hash", "tcpdump_fanout_copy",
               "tcpdump_filter_in_kernel", "tcpdump_conflicting_fanout_refused",
               "tcpdump_bad_input", "tcpdump_stats_ring_overflow",
               "libpcap_testprogs_as_on_the_device", "dumpcap_exact_frames",
               "tshark_decodes_exact_frames",
               "softflowd_4_hash_netflow", "refcount_back"]
GUEST_CHECKS = ["bad_control_writes", "rmmod_pfq_in_use_refused",
                "device_removed_in_tap_mode", "rmmod_pfq_clean", "dmesg_clean"]


@pytest.mark.vm
def test_every_hook_in_every_mode(kernel: Kernel, tmp_path: Path) -> None:
    need_vm(kernel)
    out = io.StringIO()
    code = main(["hooks", "--kernel", kernel.release, "--out", str(tmp_path), "-j", "2",
                 "--json"], out=out)
    (report,) = json.loads(out.getvalue())["hooks"]
    assert code == 0 and report["ok"], report["failures"]
    hooks, guest = report["results"]["hooks"], report["results"]["guest"]
    assert [t["name"] for t in hooks] == ENTRY_POINTS
    for test in hooks:
        assert [(c["name"], c["ok"]) for c in test["subtests"]] == [(c, True) for c in CASES]
    assert [(t["name"], t["ok"]) for t in guest] == [(c, True) for c in GUEST_CHECKS]
    # PFQ's groups through /dev/pfq, by omatic.lab.groupcheck in the guest's Python.
    groups = report["results"]["groups"]
    assert [(t["name"], t["ok"]) for t in groups] == [(c, True) for c in GROUP_CHECKS]
    # pfq.ko's guards against users without privilege and careless readers.
    safety = report["results"]["safety"]
    assert [(t["name"], t["ok"]) for t in safety] == [(c, True) for c in SAFETY_CHECKS]
    # Bad requests at volume while frames flow, by omatic.lab.fuzzcheck, with its seed.
    fuzz = report["results"]["fuzz"]
    assert [(t["name"], t["ok"]) for t in fuzz] == [("bad_requests_at_volume", True),
                                                    ("refcount_back", True)]
    assert isinstance(report["fuzz_seed"], int)
    # Debian's tcpdump and libpcap's test programs on the libpcap of `pfq-omatic pcap`.
    pcap = report["results"]["pcap"]
    assert [(t["name"], t["ok"]) for t in pcap] == [(c, True) for c in PCAP_CHECKS]
    # The module went through the tool like any driver: every entry point became a hook.
    module = KernelModule(tmp_path / kernel.release / "pfq_hooktest" / "pfq_hooktest.ko")
    undefined = module.undefined()
    assert {"pfq_netif_receive_skb", "pfq_netif_rx", "pfq_gro_receive", "pfq_gro_frags",
            "pfq_netif_receive_skb_list"} <= undefined
    assert not set(ENTRY_POINTS) & undefined
    assert json.loads((tmp_path / kernel.release / "pfq_hooktest" / "hooks.json")
                      .read_text()) == report
