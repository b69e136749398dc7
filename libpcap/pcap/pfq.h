/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * PFQ's addition to libpcap's API, installed as <pcap/pfq.h> with the libpcap that
 * `pfq-omatic pcap` builds (its version string ends in "+pfq").
 *
 * pcap_fanout(p, group, fanout) puts a pfq: capture in a PFQ group and sets how the group
 * spreads frames over its members, as the TMA 2017 paper's library does (Bonelli,
 * Giordano, Procissi, "Enabling packet fan-out in the libpcap library for parallel
 * traffic processing"):
 *   group   0..63, or -1 for a group of its own;
 *   fanout  hash (or sym: both directions of a flow to one member), rr (lb), cpu,
 *           queue (qm), rnd (random), copy (every member gets every frame), or NULL to
 *           leave the group's as it is.
 * Called before pcap_activate() it replaces PCAP_GROUP and PCAP_FANOUT; after, it moves
 * the capture to the group. A group's fan-out and filter are decided by its first
 * member; a later one asking for others gets PCAP_ERROR (as PACKET_FANOUT refuses a
 * socket asking for another mode). Returns 0, or PCAP_ERROR with pcap_geterr() saying
 * why (also for a capture that is not a pfq: device).
 */
#ifndef lib_pcap_pfq_h
#define lib_pcap_pfq_h

#include <pcap/pcap.h>

#ifdef __cplusplus
extern "C" {
#endif

PCAP_API int pcap_fanout(pcap_t *p, int group, const char *fanout);

#ifdef __cplusplus
}
#endif

#endif /* lib_pcap_pfq_h */
