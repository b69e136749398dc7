/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_endpoint.c: an endpoint, its ring and its reader. */
#ifndef _PFQ_ENDPOINT_H
#define _PFQ_ENDPOINT_H

#include <linux/atomic.h>
#include <linux/cache.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <pfq/uapi.h>

#include "pfq_mem.h"

struct file;
struct net;
struct seq_file;
struct sk_buff;
struct vm_area_struct;

/*
 * An endpoint: one open file of /dev/pfq, with its own ring (struct pfq_ring_head and
 * slots in one struct pfq_area, mmap-able). The hooks are its producers, on any CPU at
 * once and with no lock: each reserves a slot by advancing @reserved with one atomic
 * operation and publishes it with the slot's own sequence number (pfq_endpoint.c). The
 * reader consumes through mmap (tail in the shared page) or read().
 *
 * Two mutexes, so that no lock ->mmap() takes is ever held across a user copy (whose
 * fault takes mmap_lock, which ->mmap() runs under): @ring_mutex makes the ring, and
 * ->mmap() takes it; @read_mutex serialises read() consumers, and ->mmap() never does.
 */
struct pfq_endpoint {
	struct mutex ring_mutex;	/* making the ring; never across a user copy */
	struct mutex read_mutex;	/* read() consumers; never taken by ->mmap() */
	struct pfq_ring_head *ring;	/* NULL until sized or first used */
	struct pfq_area area;		/* the memory of @ring */
	size_t ring_size;		/* bytes of the area, page aligned */
	/* The ring's geometry as the kernel trusts it: the shared page is user memory. */
	u32 slots, slot_size, caplen;
	u8 *slot0;
	/* Slots reserved by producers since the ring was made: the kernel's own count. */
	atomic64_t reserved ____cacheline_aligned_in_smp;
	atomic64_t full;		/* frames the full ring had no room for */
	atomic64_t lost;		/* reserved slots whose copy failed (published empty) */
	wait_queue_head_t wait;
	struct net *net;		/* the opener's namespace (a reference) */
	int group;			/* -1 when in none; pfq_groups_mutex */
	u32 id;				/* for /proc/net/pfq/groups */
	pid_t pid;			/* of the opener, in the initial pid namespace */
	struct list_head node;		/* in the endpoint list, its own mutex */
};

struct pfq_endpoint *pfq_endpoint_alloc(void);
void pfq_endpoint_free(struct pfq_endpoint *ep);
int pfq_endpoint_ensure_ring(struct pfq_endpoint *ep);
int pfq_endpoint_ring(struct pfq_endpoint *ep, struct pfq_ring_info *info);
bool pfq_endpoint_put(struct pfq_endpoint *ep, struct sk_buff *skb, int offset, u32 snap,
		      u64 tstamp_ns);
int pfq_endpoint_mmap(struct pfq_endpoint *ep, struct vm_area_struct *vma);
ssize_t pfq_endpoint_read(struct pfq_endpoint *ep, char __user *buf, size_t count,
			  bool nonblock);
__poll_t pfq_endpoint_poll(struct pfq_endpoint *ep, struct file *file, poll_table *wait);
void pfq_endpoint_stats(struct pfq_endpoint *ep, struct pfq_endpoint_stats *stats);
void pfq_endpoints_show(struct seq_file *m);

#endif /* _PFQ_ENDPOINT_H */
