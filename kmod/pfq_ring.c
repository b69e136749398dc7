// SPDX-License-Identifier: GPL-2.0
/*
 * Capture ring: a bounded array of preallocated slots, one frame each.
 *
 * While the device's pcap file is open, the hooks copy a frame in under the ring's
 * spinlock (interrupts off, since netif_rx may run in hard interrupt context); a pcap
 * reader copies the oldest frame out under the same lock. Nothing allocates or waits
 * on the receive path: when the ring is full the copy is refused and the hook counts
 * it (pfq_hooks.c). The skb itself never enters the ring, so the ring can never leak
 * one.
 */
#include <linux/err.h>
#include <linux/if_vlan.h>
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "pfq_mem.h"
#include "pfq_ring.h"

static size_t pfq_ring_bytes(const struct pfq_ring *ring)
{
	return PAGE_ALIGN(array_size(ring->slots, ring->slot_size));
}

/*
 * A device's ring, charged to the caller's memory cgroup and counted against the
 * module's cap (pfq_mem.c): ERR_PTR(-ENOBUFS) over the cap, ERR_PTR(-ENOMEM) when the
 * allocator refuses.
 */
struct pfq_ring *pfq_ring_alloc(u32 slots, u32 snaplen)
{
	struct pfq_ring *ring = kzalloc(sizeof(*ring), GFP_KERNEL_ACCOUNT);
	int err;

	if (!ring)
		return ERR_PTR(-ENOMEM);
	spin_lock_init(&ring->lock);
	ring->slots = slots;
	ring->snaplen = snaplen;
	/* struct_size() on a typed null pointer: struct_size_t() is only in 6.5 and later. */
	ring->slot_size = ALIGN(struct_size((struct pfq_slot *)NULL, data, snaplen), 8);
	err = pfq_mem_charge(pfq_ring_bytes(ring) >> PAGE_SHIFT);
	if (err)
		goto ring;
	err = -ENOMEM;
	ring->mem = __vmalloc(pfq_ring_bytes(ring), GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!ring->mem)
		goto charge;
	return ring;
charge:
	pfq_mem_uncharge(pfq_ring_bytes(ring) >> PAGE_SHIFT);
ring:
	kfree(ring);
	return ERR_PTR(err);
}

/* Any context: vfree() defers itself in interrupt context. */
void pfq_ring_free(struct pfq_ring *ring)
{
	if (!ring)
		return;
	vfree(ring->mem);
	pfq_mem_uncharge(pfq_ring_bytes(ring) >> PAGE_SHIFT);
	kfree(ring);
}

static void pfq_ring_free_rcu(struct rcu_head *rcu)
{
	pfq_ring_free(container_of(rcu, struct pfq_ring, rcu));
}

/*
 * Free @ring once every hook and pcap reader that could have found it (under RCU) has
 * left, without waiting here: callers hold RTNL.
 */
void pfq_ring_free_deferred(struct pfq_ring *ring)
{
	if (ring)
		call_rcu(&ring->rcu, pfq_ring_free_rcu);
}

static struct pfq_slot *pfq_ring_slot(struct pfq_ring *ring, u32 index)
{
	return (struct pfq_slot *)(ring->mem + (size_t)(index % ring->slots) * ring->slot_size);
}

/*
 * pfq_copy_frame() for a frame with a stripped tag or in fragments. A tag a NIC
 * stripped into skb metadata is put back, as AF_PACKET does, so the capture shows the
 * frame as it was on the wire; pfq_frame_len() counts the tag under the same
 * condition, even when @caplen keeps only part of it.
 */
int pfq_copy_frame_slow(const struct sk_buff *skb, int offset, u8 *to, u32 caplen)
{
	const u32 macs = 2 * ETH_ALEN;
	u8 head[2 * ETH_ALEN + VLAN_HLEN];
	__be16 tag[2];
	u32 n;

	if (!skb_vlan_tag_present(skb) || skb->len - offset < macs)
		return skb_copy_bits(skb, offset, to, caplen);
	/* On the wire the tag follows the MAC addresses: TPID, then TCI. */
	if (skb_copy_bits(skb, offset, head, macs))
		return -EFAULT;
	tag[0] = skb->vlan_proto;
	tag[1] = htons(skb_vlan_tag_get(skb));
	memcpy(head + macs, tag, sizeof(tag));
	n = min_t(u32, caplen, sizeof(head));
	memcpy(to, head, n);
	if (caplen == n)
		return 0;
	return skb_copy_bits(skb, offset + macs, to + n, caplen - n);
}

/*
 * Store a copy of the frame starting @offset bytes from skb->data (negative when the
 * MAC header has been pulled), stamped @tstamp_ns (CLOCK_REALTIME). Returns false when
 * the ring is full or the skb is shorter than it claims. Any context.
 */
bool pfq_ring_put(struct pfq_ring *ring, const struct sk_buff *skb, int offset, u64 tstamp_ns)
{
	u32 len = pfq_frame_len(skb, offset);
	u32 caplen = min(len, ring->snaplen);
	struct pfq_slot *slot;
	unsigned long flags;
	bool stored = false;

	spin_lock_irqsave(&ring->lock, flags);
	if (ring->tail - ring->head < ring->slots) {
		slot = pfq_ring_slot(ring, ring->tail);
		if (!pfq_copy_frame(skb, offset, slot->data, caplen)) {
			slot->tstamp = ns_to_ktime(tstamp_ns);
			slot->len = len;
			slot->caplen = caplen;
			ring->tail++;
			stored = true;
		}
	}
	spin_unlock_irqrestore(&ring->lock, flags);
	return stored;
}

/*
 * Move the oldest frame into @out, which has room for snaplen bytes of data.
 * Returns false when the ring is empty.
 */
bool pfq_ring_get(struct pfq_ring *ring, struct pfq_slot *out)
{
	struct pfq_slot *slot;
	unsigned long flags;
	bool got = false;

	spin_lock_irqsave(&ring->lock, flags);
	if (ring->tail != ring->head) {
		slot = pfq_ring_slot(ring, ring->head);
		memcpy(out, slot, struct_size(slot, data, slot->caplen));
		ring->head++;
		got = true;
	}
	spin_unlock_irqrestore(&ring->lock, flags);
	return got;
}

/* Forget every frame the ring holds (a pcap file's first reader, pfq_pcap.c). */
void pfq_ring_clear(struct pfq_ring *ring)
{
	unsigned long flags;

	spin_lock_irqsave(&ring->lock, flags);
	ring->head = ring->tail;
	spin_unlock_irqrestore(&ring->lock, flags);
}

u32 pfq_ring_count(struct pfq_ring *ring)
{
	unsigned long flags;
	u32 count;

	spin_lock_irqsave(&ring->lock, flags);
	count = ring->tail - ring->head;
	spin_unlock_irqrestore(&ring->lock, flags);
	return count;
}
