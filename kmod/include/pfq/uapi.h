/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * PFQ endpoints: the interface of /dev/pfq, shared by pfq.ko and user space
 * (omatic/pfq/uapi.py mirrors it; tests/test_pfq_user.py checks that they agree).
 *
 * Each open file of /dev/pfq is an endpoint: a bounded ring of preallocated slots that
 * the receive hooks fill. An endpoint joins one group (0..PFQ_GROUPS-1); a group binds
 * to devices (each optionally to one hardware queue), steers each frame to one of its
 * endpoints (or to all, in copy mode) and filters frames with classic BPF and a VLAN
 * filter. Groups are fed by devices in tap or capture mode (/proc/net/pfq/control);
 * a device in pass mode never looks at groups.
 *
 * The ring is read through mmap() (offset 0, pfq_ring_info.mmap_size bytes) or with
 * read(); use one or the other. The first page is a struct pfq_ring_head; slot i
 * starts at data_offset + (i % slots) * slot_size with a struct pfq_frame, then caplen
 * bytes of the frame from its Ethernet header on. Frames are numbered from 0 since the
 * ring was made; frame n lives in slot n % slots. Producers on several CPUs fill slots
 * at once, so there is no shared head: frame n is published when its slot's `seq`
 * equals (__u32)(n + 1), stored last (store-release; load-acquire it before the rest of
 * the slot). The reader consumes frames in order by advancing `tail`, the number of
 * the next frame it wants (store-release after reading the slot); the kernel reuses a
 * slot only once `tail` has passed it. A slot with PFQ_FRAME_EMPTY holds no frame (its
 * copy failed, counted as a drop): consume it and go on.
 * read() returns whole records back to back, each a struct pfq_frame followed by its
 * caplen bytes (no padding), as many as fit; its buffer must hold one record of the
 * ring's caplen (EINVAL otherwise). It blocks until there is one unless the file is
 * O_NONBLOCK; poll() says POLLIN when a frame is waiting or being written (a reader may
 * find the slot at `tail` unpublished for the time of one copy). A sleeping reader is
 * woken by the producer of the frame it waits for, once: frames that arrive while it is
 * awake cost no wake-up. A reader that would rather be woken for a batch (and polls
 * with a timeout for the rest, as libpcap's does) sets `wake_after` in the ring's head
 * before it sleeps: poll() then says POLLIN, and a read() that found none returns,
 * once that many frames are there.
 *
 * A group's settings (bindings, steering, filters) last while it has endpoints: when
 * the last one leaves, the group is unbound from every device and reset. Any member may
 * change them, unless it asks to share them (PFQ_STEER_SHARED, PFQ_FILTER_SHARED): then
 * the first member to set one decides it, and a later one asking for another gets EBUSY
 * (PACKET_FANOUT's rule), so that N processes started alike share one group's load.
 * Each ioctl's argument is a pointer to what its definition names.
 */
#ifndef _PFQ_UAPI_H
#define _PFQ_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define PFQ_GROUPS		64	/* group ids are 0..63 */
#define PFQ_GROUP_ENDPOINTS	64	/* endpoints one group holds at most */
#define PFQ_RING_MAGIC		0x52514650	/* "PFQR", little-endian */
#define PFQ_VLAN_IDS		4096

/* PFQ_IOC_JOIN's group id for a group of one's own: the lowest with no endpoint (EBUSY
 * when each has some); PFQ_IOC_STATS says which it was. */
#define PFQ_GROUP_ANY		0xffffffffu

/* How a group picks the endpoint(s) of a frame. */
enum pfq_steer {
	PFQ_STEER_COPY = 0,	/* every endpoint gets every frame (the default) */
	PFQ_STEER_RR = 1,	/* one endpoint after the other */
	PFQ_STEER_HASH = 2,	/* symmetric flow hash: both directions to one endpoint; IPv4
				 * and IPv6 addresses, with the ports of TCP, UDP, UDP-Lite
				 * and SCTP (not of later fragments); other frames by their
				 * MAC pair; up to two VLAN tags skipped */
	PFQ_STEER_CPU = 3,	/* by the CPU that received the frame */
	PFQ_STEER_QUEUE = 4,	/* by the skb's receive queue */
	PFQ_STEER_RND = 5,	/* at random */
	PFQ_STEER_MAX,
};

/* Or'ed into PFQ_IOC_STEER's mode: set it only if no member has set the group's steering
 * yet, and accept the same again; another mode gets EBUSY. */
#define PFQ_STEER_SHARED	0x80000000u

/* Slots start on their own cache line: producers on several CPUs fill neighbouring slots
 * at once, and a line two slots shared would move between their caches with each frame. */
#define PFQ_SLOT_ALIGN		64

/* The first page of the mmap'd ring. */
struct pfq_ring_head {
	__u32 magic;		/* PFQ_RING_MAGIC */
	__u32 version;		/* 2 (1 had a shared head; seq was padding) */
	__u32 slots;
	__u32 slot_size;	/* stride of the slots, a multiple of PFQ_SLOT_ALIGN */
	__u32 caplen;		/* bytes kept per frame at most */
	__u32 data_offset;	/* where slot 0 starts: one page */
	__u64 pad0[5];
	__u64 pad_head;		/* 64: version 1's head, no longer written */
	__u64 pad1[7];
	__u64 tail;		/* 128: frames consumed (reader writes) */
	__u32 wake_after;	/* 136: how many frames wake a sleeping reader (reader
				 * writes): 0 and 1 the first, at most the ring's slots */
	__u32 pad2;
};

#define PFQ_RING_VERSION	2

/* pfq_frame.flags */
#define PFQ_FRAME_VLAN		1	/* vlan_tci is a tag the NIC stripped */
#define PFQ_FRAME_EMPTY		2	/* no frame: the copy failed; skip the slot */

/* Each slot, and each record read(): then caplen bytes of the frame. */
struct pfq_frame {
	__u64 tstamp_ns;	/* CLOCK_REALTIME at capture */
	__u32 len;		/* length on the wire, 802.1Q tag included */
	__u32 caplen;		/* bytes that follow */
	__u32 ifindex;		/* the device it came from */
	__u16 queue;		/* its receive queue (0 when the driver set none) */
	__u16 vlan_tci;		/* with PFQ_FRAME_VLAN: the tag the NIC stripped; its 4
				 * bytes are put back into the frame after the MACs */
	__u32 flags;		/* PFQ_FRAME_* */
	__u32 seq;		/* the frame's number + 1, truncated: written last */
};

/* PFQ_IOC_RING: size the ring, before the first join, mmap() or read(), which make it
 * with the module's sizes; afterwards only its sizes (or 0) are accepted (EBUSY). */
struct pfq_ring_info {
	__u32 slots;		/* in/out: 1..1048576 (default: module parameter ring_slots) */
	__u32 caplen;		/* in/out: 64..65535 (default: module parameter snaplen) */
	__u32 slot_size;	/* out */
	__u32 data_offset;	/* out */
	__u64 mmap_size;	/* out: bytes to mmap at offset 0 */
};

/* PFQ_IOC_BIND, PFQ_IOC_UNBIND: the endpoint's group and a device of its namespace. */
struct pfq_bind {
	char ifname[16];	/* IFNAMSIZ */
	__s32 queue;		/* -1: every queue; else only frames of that rx queue */
	__u32 pad;
};

/* PFQ_IOC_FILTER: a classic BPF program (struct sock_filter[len]); len 0 removes it.
 * It runs on the frame from its Ethernet header on; 0 refuses the frame, anything else
 * is the most bytes to keep of it (as a packet socket's filter). */
struct pfq_filter {
	__u32 len;		/* instructions, at most 4096 (BPF_MAXINSNS) */
	__u32 flags;		/* PFQ_FILTER_*; other bits: EINVAL */
	__u64 insns;		/* user pointer to struct sock_filter[len] */
};

/* pfq_filter.flags: set the group's filter only if no member has set one yet, and accept
 * the same program again; another program gets EBUSY. */
#define PFQ_FILTER_SHARED	1

/* PFQ_IOC_VLAN: which frames pass by their VLAN id; enabled 0 lets every frame pass. */
struct pfq_vlan {
	__u32 enabled;
	__u32 untagged;		/* 1: frames without a tag pass too */
	__u64 vids[PFQ_VLAN_IDS / 64];	/* bit v % 64 of vids[v / 64]: VLAN id v passes */
};

/* PFQ_IOC_STATS: this endpoint's counters. */
struct pfq_endpoint_stats {
	__u64 received;		/* frames steered to it: delivered + dropped */
	__u64 delivered;	/* put in its ring */
	__u64 dropped;		/* its ring was full (or, rarely, the copy failed) */
	__u32 group;		/* -1 when in no group */
	__u32 pad;
};

#define PFQ_IOC_MAGIC	0xF9
#define PFQ_IOC_RING	_IOWR(PFQ_IOC_MAGIC, 1, struct pfq_ring_info)
#define PFQ_IOC_JOIN	_IOW(PFQ_IOC_MAGIC, 2, __u32)	/* group id */
#define PFQ_IOC_LEAVE	_IO(PFQ_IOC_MAGIC, 3)
#define PFQ_IOC_BIND	_IOW(PFQ_IOC_MAGIC, 4, struct pfq_bind)
#define PFQ_IOC_UNBIND	_IOW(PFQ_IOC_MAGIC, 5, struct pfq_bind)
#define PFQ_IOC_STEER	_IOW(PFQ_IOC_MAGIC, 6, __u32)	/* enum pfq_steer */
#define PFQ_IOC_FILTER	_IOW(PFQ_IOC_MAGIC, 7, struct pfq_filter)
#define PFQ_IOC_VLAN	_IOW(PFQ_IOC_MAGIC, 8, struct pfq_vlan)
#define PFQ_IOC_STATS	_IOR(PFQ_IOC_MAGIC, 9, struct pfq_endpoint_stats)

#endif /* _PFQ_UAPI_H */
