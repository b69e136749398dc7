/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_ring.c: a device's capture ring, and copying a frame out of an skb. */
#ifndef _PFQ_RING_H
#define _PFQ_RING_H

#include <linux/if_ether.h>
#include <linux/if_vlan.h>
#include <linux/ktime.h>
#include <linux/rcupdate.h>
#include <linux/skbuff.h>
#include <linux/spinlock.h>
#include <linux/types.h>

/* One captured frame, as stored in a ring slot. */
struct pfq_slot {
	ktime_t tstamp;	/* wall clock at capture */
	u32 len;	/* frame length on the wire */
	u32 caplen;	/* bytes stored in data[], at most snaplen */
	u8 data[];
};

/*
 * Bounded ring of preallocated slots. Producers (the hooks, any context, any CPU) and
 * consumers (pcap readers) take @lock with interrupts off; nothing ever waits for
 * room: a full ring drops the copy and the hook counts it. Freed after a grace period
 * (@rcu), since the hooks and pcap readers find it under RCU.
 */
struct pfq_ring {
	struct rcu_head rcu;
	spinlock_t lock;
	u32 slots;		/* capacity */
	u32 snaplen;		/* bytes kept per frame */
	size_t slot_size;	/* stride of @mem */
	u32 head;		/* next slot to read, free running */
	u32 tail;		/* next slot to write, free running */
	u8 *mem;
};

struct pfq_ring *pfq_ring_alloc(u32 slots, u32 snaplen);
void pfq_ring_free(struct pfq_ring *ring);
void pfq_ring_free_deferred(struct pfq_ring *ring);
bool pfq_ring_put(struct pfq_ring *ring, const struct sk_buff *skb, int offset, u64 tstamp_ns);
bool pfq_ring_get(struct pfq_ring *ring, struct pfq_slot *out);
void pfq_ring_clear(struct pfq_ring *ring);
u32 pfq_ring_count(struct pfq_ring *ring);

/* Also for the endpoints' rings (pfq_endpoint.c) */
int pfq_copy_frame_slow(const struct sk_buff *skb, int offset, u8 *to, u32 caplen);

/*
 * Copy @caplen bytes of the frame that starts @offset bytes from skb->data into @to;
 * 0, or -EFAULT when the skb is shorter than that. Most frames have no stripped tag
 * and lie in the skb's linear part (the headroom holds a pulled Ethernet header):
 * one memcpy(). Fragments and stripped tags take pfq_copy_frame_slow().
 */
static inline int pfq_copy_frame(const struct sk_buff *skb, int offset, u8 *to, u32 caplen)
{
	if (likely(!skb_vlan_tag_present(skb) &&
		   (s64)offset + caplen <= skb_headlen(skb))) {
		memcpy(to, skb->data + offset, caplen);
		return 0;
	}
	return pfq_copy_frame_slow(skb, offset, to, caplen);
}

/* The frame's length on the wire: from the Ethernet header on, with a stripped tag. */
static inline u32 pfq_frame_len(const struct sk_buff *skb, int offset)
{
	u32 len = skb->len - offset;

	if (skb_vlan_tag_present(skb) && len >= 2 * ETH_ALEN)
		len += VLAN_HLEN;
	return len;
}

#endif /* _PFQ_RING_H */
