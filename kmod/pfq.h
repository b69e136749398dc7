/* SPDX-License-Identifier: GPL-2.0 */
/*
 * PFQ receive core: what more than one unit of pfq.ko needs. Each unit has its own
 * header (pfq_<unit>.h) for what it offers; this one holds the checks every build
 * needs and the state of a device, which pfq_dev.c keeps and the hooks, the groups
 * and the pcap files read.
 *
 * Every net device of init_net has a struct pfq_dev, created by the netdevice
 * notifier on NETDEV_REGISTER and freed on NETDEV_UNREGISTER. Configuration (the
 * device list, modes, rings, proc entries) changes under RTNL; the receive hooks find
 * a device's state with an RCU hash lookup and count per CPU, so the pass path takes
 * no lock and touches no cache line shared between CPUs.
 */
#ifndef _PFQ_H
#define _PFQ_H

#include <linux/atomic.h>
#include <linux/list.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/types.h>
#include <pfq/uapi.h>

struct net_device;
struct pfq_ring;
struct proc_dir_entry;

/* The rings' head and tail are u64 read and written with acquire/release, which only a
 * 64-bit kernel does in one access.
 */
#ifndef CONFIG_64BIT
#error "pfq.ko needs a 64-bit kernel (CONFIG_64BIT)"
#endif

#ifndef PFQ_PROBES_WORK
#error "kmod/probes/netif_rx.c did not compile: the feature probes in Kbuild are broken"
#endif

/* pde_data() is PDE_DATA() before 5.17 (kmod/probes/pde_data.c). */
#ifndef PFQ_HAVE_PDE_DATA
#define pde_data(inode) PDE_DATA(inode)
#endif

enum pfq_mode {
	PFQ_PASS,	/* count, then hand to the kernel unchanged */
	PFQ_TAP,	/* copy to the rings that want it, then hand to the kernel */
	PFQ_CAPTURE,	/* copy to the rings that want it and free; the stack never sees it */
	PFQ_MODE_MAX,
};

enum pfq_hook {
	PFQ_HOOK_NETIF_RECEIVE_SKB,
	PFQ_HOOK_NETIF_RECEIVE_SKB_LIST,
	PFQ_HOOK_GRO_RECEIVE,
	PFQ_HOOK_GRO_FRAGS,
	PFQ_HOOK_NETIF_RX,
#ifdef PFQ_HAVE_NETIF_RX_NI
	PFQ_HOOK_NETIF_RX_NI,
#endif
#ifdef PFQ_HAVE_NETIF_RX_ANY_CONTEXT
	PFQ_HOOK_NETIF_RX_ANY_CONTEXT,
#endif
	PFQ_HOOK_MAX,
};

/* One CPU's counters for one hook of one device; summed when read. */
struct pfq_counters {
	u64 packets;	/* frames seen by the hook */
	u64 bytes;	/* their length from the Ethernet header on */
	u64 to_stack;	/* handed to the kernel's own function */
	u64 captured;	/* a copy went to a ring: the device's or an endpoint's */
	u64 dropped;	/* lost: no ring that wanted it had room, or capture and none took it */
};

struct pfq_pcpu {
	struct pfq_counters hook[PFQ_HOOK_MAX];
};

struct pfq_dev {
	struct rcu_head rcu;		/* freed after the hooks that found it */
	struct hlist_node hnode;	/* in pfq_dev_table, RCU readers */
	struct list_head node;		/* in pfq_dev_list, RTNL */
	struct net_device *dev;		/* valid until NETDEV_UNREGISTER removes us */
	int mode;			/* enum pfq_mode; READ_ONCE on the fast path */
	struct pfq_ring __rcu *ring;	/* non-NULL in tap and capture */
	atomic_t pcap_readers;		/* open pcap files: @ring fills only while > 0 */
	struct pfq_pcpu __percpu *stats;
	struct proc_dir_entry *pcap;	/* /proc/net/pfq/pcap/<name> */
	/* Groups bound to the device (bit g: group g), RTNL + pfq_groups_mutex to change,
	 * READ_ONCE in the hooks; and each one's rx queue, -1 for every queue.
	 */
	u64 groups;
	s32 group_queue[PFQ_GROUPS];
};

#endif /* _PFQ_H */
