// SPDX-License-Identifier: GPL-2.0
/*
 * The receive hooks rewritten drivers call instead of the kernel's entry points.
 *
 * Each hook looks its device up under RCU, counts the frame per CPU, and by the
 * device's mode: pass hands the skb to the kernel's own function unchanged; tap copies
 * the frame to the rings that want it, then hands the skb on; capture copies the frame
 * to the rings that want it and frees the skb. Devices PFQ does not track (other
 * namespaces) pass uncounted.
 *
 * The rings that want a frame: the device's own ring while someone has its pcap file
 * open (pfq_pcap.c; a frame no one will read is not copied), and the endpoints of the
 * groups bound to the device whose filters pass it (pfq_group.c). One frame counts in
 * at most one of a device's counters beyond packets and to_stack:
 *   captured: a copy went to at least one ring, the device's or an endpoint's;
 *   dropped: no copy went anywhere, and either a ring wanted one but had no room, or
 *     the device is in capture mode (the skb is freed, so the frame is lost).
 * A tap-mode frame that no ring wanted is neither: the stack has it, nobody lost it.
 * So in capture mode packets = captured + dropped; in tap, to_stack = packets and
 * captured + dropped <= packets; in pass, to_stack = packets and the others stay 0.
 *
 * What a hook returns when PFQ keeps a packet (capture mode): what the kernel function
 * returns for a packet that is gone and needs nothing more from the driver.
 *   netif_receive_skb, netif_rx(_ni): NET_RX_SUCCESS once a ring holds a copy,
 *     NET_RX_DROP when none took it (the kernel also says NET_RX_DROP when it
 *     drops, e.g. a full backlog);
 *   napi_gro_receive, napi_gro_frags: GRO_CONSUMED (the skb was taken by someone else,
 *     as when a GRO callback steals it); GRO_DROP no longer exists (removed in 5.12 by
 *     "net-gro: remove GRO_DROP").
 *
 * napi_gro_frags() takes its skb from napi->skb, filled by the driver after
 * napi_get_frags(); its MAC header has not been pulled yet, so the frame starts at
 * skb->data (the Ethernet header usually lives in frag 0, which skb_copy_bits()
 * reads). To keep it, the hook does what napi_frags_skb() does first: it clears
 * napi->skb, so the driver's next napi_get_frags() allocates a fresh skb, then frees
 * the old one (napi_reuse_skb(), which would recycle it, is not exported).
 */
#include <linux/export.h>
#include <linux/netdevice.h>
#include <linux/percpu.h>
#include <linux/sched/clock.h>
#include <linux/skbuff.h>
#include <pfq/hooks.h>

#include "pfq.h"
#include "pfq_dev.h"
#include "pfq_group.h"
#include "pfq_ring.h"

enum pfq_verdict {
	PFQ_TO_STACK,	/* hand the skb to the kernel */
	PFQ_KEPT,	/* a ring holds a copy: consume the skb */
	PFQ_DROP,	/* capture, but no ring took a copy: drop the skb */
};

/*
 * Offset from skb->data to the Ethernet header: negative once eth_type_trans() has
 * pulled it; 0 when the driver set no MAC header (the frame starts at skb->data).
 */
static int pfq_mac_offset(const struct sk_buff *skb)
{
	return skb_mac_header_was_set(skb) ? min(skb_mac_offset(skb), 0) : 0;
}

/*
 * Frame timestamps are CLOCK_REALTIME, but the clock is read for real only once per
 * PFQ_CLOCK_REBASE_NS on each CPU. In between, a stamp is the CPU's sched_clock() (from
 * the cycle counter: a few nanoseconds to read, where the realtime clocksource may be
 * an emulated HPET taking microseconds) plus the offset between the two clocks
 * measured on that CPU at its last real read. The raw sched_clock() rather than
 * local_clock(): the latter only corrects for counters that differ between CPUs, and
 * each CPU's offset already does. They drift apart by parts per million, so a stamp is
 * off by tens of nanoseconds at most, and a change of the realtime clock
 * (settimeofday, NTP steps) shows within PFQ_CLOCK_REBASE_NS. A hard irq that rebases
 * in the middle of a softirq's reading leaves a pair that is only rebased once more:
 * the offset is one word, always valid. Where sched_clock() runs faster than the
 * realtime clock (a guest's may, by far more than parts per million), a rebase moves
 * the offset back and the next stamp would come before the last one; stamps of one CPU
 * stay in order across that (up to PFQ_CLOCK_REBASE_NS back; a clock stepped back
 * further is followed).
 */
#define PFQ_CLOCK_REBASE_NS	NSEC_PER_MSEC

struct pfq_clock {
	u64 offset;	/* CLOCK_REALTIME - sched_clock() at the last real read */
	u64 rebased;	/* sched_clock() then */
	u64 last;	/* the last stamp given */
};

static DEFINE_PER_CPU(struct pfq_clock, pfq_clock);

static u64 pfq_clock_now(void)
{
	struct pfq_clock *c = get_cpu_ptr(&pfq_clock);
	u64 local = sched_clock();
	u64 offset, stamp, last;

	if (unlikely(local - READ_ONCE(c->rebased) > PFQ_CLOCK_REBASE_NS)) {
		offset = ktime_get_real_ns() - local;
		WRITE_ONCE(c->offset, offset);
		WRITE_ONCE(c->rebased, local);
	} else {
		offset = READ_ONCE(c->offset);
	}
	stamp = local + offset;
	last = READ_ONCE(c->last);
	if (unlikely(stamp < last && last - stamp <= PFQ_CLOCK_REBASE_NS))
		stamp = last;
	WRITE_ONCE(c->last, stamp);
	put_cpu_ptr(&pfq_clock);
	return stamp;
}

/*
 * The instant of a frame, taken once for every ring that keeps a copy of it, and once
 * for a whole list: *@now is 0 until taken.
 */
static u64 pfq_tstamp(u64 *now)
{
	if (!*now)
		*now = pfq_clock_now();
	return *now;
}

/*
 * Count the frame and copy it as the mode says: in tap and capture to the device's
 * ring while its pcap file is open, and to the groups bound to the device. Caller holds
 * rcu_read_lock().
 */
static enum pfq_verdict pfq_rx(struct pfq_dev *pd, enum pfq_hook hook,
			       struct sk_buff *skb, int offset, u64 *now)
{
	struct pfq_counters __percpu *c = &pd->stats->hook[hook];
	int mode = READ_ONCE(pd->mode);
	enum pfq_groups_rx taken;
	struct pfq_ring *ring;
	bool stored = false;	/* a ring holds a copy */
	bool wanted = false;	/* a ring wanted one */
	u64 groups;

	this_cpu_inc(c->packets);
	this_cpu_add(c->bytes, skb->len - offset);
	if (likely(mode == PFQ_PASS)) {
		this_cpu_inc(c->to_stack);
		return PFQ_TO_STACK;
	}
	/* A frame no one will read is not copied: no lock, no clock read (pfq_pcap.c). */
	if (atomic_read(&pd->pcap_readers)) {
		ring = rcu_dereference(pd->ring);
		if (ring) {
			wanted = true;
			stored = pfq_ring_put(ring, skb, offset, pfq_tstamp(now));
		}
	}
	/* Each group's queue is written before its bit (pfq_group_bind()). */
	groups = smp_load_acquire(&pd->groups);
	if (groups) {
		taken = pfq_groups_rx(pd, groups, skb, offset, pfq_tstamp(now));
		stored |= taken == PFQ_GROUPS_TAKEN;
		wanted |= taken != PFQ_GROUPS_IGNORED;
	}
	if (stored)
		this_cpu_inc(c->captured);
	else if (wanted || mode == PFQ_CAPTURE)
		this_cpu_inc(c->dropped);
	if (mode == PFQ_CAPTURE)
		return stored ? PFQ_KEPT : PFQ_DROP;
	this_cpu_inc(c->to_stack);
	return PFQ_TO_STACK;
}

static enum pfq_verdict pfq_rx_dev(const struct net_device *dev, enum pfq_hook hook,
				   struct sk_buff *skb, int offset)
{
	enum pfq_verdict verdict = PFQ_TO_STACK;
	struct pfq_dev *pd;
	u64 now = 0;

	rcu_read_lock();
	pd = pfq_dev_lookup(dev);
	if (pd)
		verdict = pfq_rx(pd, hook, skb, offset, &now);
	rcu_read_unlock();
	return verdict;
}

/* Free an skb PFQ kept or dropped; any context (netif_rx may run in hard irq). */
static void pfq_free(struct sk_buff *skb, enum pfq_verdict verdict)
{
	if (verdict == PFQ_KEPT)
		dev_consume_skb_any(skb);
	else
		dev_kfree_skb_any(skb);
}

/*
 * The same from the GRO hooks, called in a NAPI poll: an skb PFQ kept goes to the
 * CPU's NAPI cache (napi_consume_skb()), freed in bulk and reused by the driver's next
 * napi_alloc_skb(), as the stack does with the skbs it consumes in a poll. A poll with
 * interrupts off (netpoll, or a hard irq, which runs with them off) or outside softirq
 * context frees it the usual way.
 */
static void pfq_free_napi(struct sk_buff *skb, enum pfq_verdict verdict)
{
	if (verdict == PFQ_KEPT && in_softirq() && !irqs_disabled())
		napi_consume_skb(skb, 1);
	else
		pfq_free(skb, verdict);
}

static int pfq_rx_verdict(struct sk_buff *skb, enum pfq_verdict verdict)
{
	pfq_free(skb, verdict);
	return verdict == PFQ_KEPT ? NET_RX_SUCCESS : NET_RX_DROP;
}

int pfq_netif_receive_skb(struct sk_buff *skb)
{
	enum pfq_verdict v = pfq_rx_dev(skb->dev, PFQ_HOOK_NETIF_RECEIVE_SKB, skb,
					pfq_mac_offset(skb));

	if (likely(v == PFQ_TO_STACK))
		return netif_receive_skb(skb);
	return pfq_rx_verdict(skb, v);
}
EXPORT_SYMBOL_GPL(pfq_netif_receive_skb);

void pfq_netif_receive_skb_list(struct list_head *head)
{
	const struct net_device *dev = NULL;
	struct pfq_dev *pd = NULL;
	struct sk_buff *skb, *next;
	enum pfq_verdict v;
	u64 now = 0;	/* one instant for the batch the driver hands over */

	rcu_read_lock();
	list_for_each_entry_safe(skb, next, head, list) {
		/* A batch usually comes from one device: look it up once. */
		if (skb->dev != dev) {
			dev = skb->dev;
			pd = pfq_dev_lookup(dev);
		}
		if (!pd)
			continue;
		v = pfq_rx(pd, PFQ_HOOK_NETIF_RECEIVE_SKB_LIST, skb, pfq_mac_offset(skb),
			   &now);
		if (v != PFQ_TO_STACK) {
			skb_list_del_init(skb);
			pfq_free(skb, v);
		}
	}
	rcu_read_unlock();
	netif_receive_skb_list(head);
}
EXPORT_SYMBOL_GPL(pfq_netif_receive_skb_list);

gro_result_t pfq_gro_receive(struct napi_struct *napi, struct sk_buff *skb)
{
	enum pfq_verdict v = pfq_rx_dev(skb->dev, PFQ_HOOK_GRO_RECEIVE, skb,
					pfq_mac_offset(skb));

	if (likely(v == PFQ_TO_STACK))
		return napi_gro_receive(napi, skb);
	pfq_free_napi(skb, v);
	return GRO_CONSUMED;
}
EXPORT_SYMBOL_GPL(pfq_gro_receive);

gro_result_t pfq_gro_frags(struct napi_struct *napi)
{
	struct sk_buff *skb = napi->skb;
	enum pfq_verdict v;

	/* No skb is a driver bug the kernel function reports its own way: leave it be. */
	if (unlikely(!skb))
		return napi_gro_frags(napi);
	/* The MAC header is not pulled yet: the frame starts at skb->data. */
	v = pfq_rx_dev(napi->dev, PFQ_HOOK_GRO_FRAGS, skb, 0);
	if (likely(v == PFQ_TO_STACK))
		return napi_gro_frags(napi);
	napi->skb = NULL;
	pfq_free_napi(skb, v);
	return GRO_CONSUMED;
}
EXPORT_SYMBOL_GPL(pfq_gro_frags);

int pfq_netif_rx(struct sk_buff *skb)
{
	enum pfq_verdict v = pfq_rx_dev(skb->dev, PFQ_HOOK_NETIF_RX, skb, pfq_mac_offset(skb));

	if (likely(v == PFQ_TO_STACK))
		return netif_rx(skb);
	return pfq_rx_verdict(skb, v);
}
EXPORT_SYMBOL_GPL(pfq_netif_rx);

#ifdef PFQ_HAVE_NETIF_RX_NI
int pfq_netif_rx_ni(struct sk_buff *skb)
{
	enum pfq_verdict v = pfq_rx_dev(skb->dev, PFQ_HOOK_NETIF_RX_NI, skb,
					pfq_mac_offset(skb));

	if (likely(v == PFQ_TO_STACK))
		return netif_rx_ni(skb);
	return pfq_rx_verdict(skb, v);
}
EXPORT_SYMBOL_GPL(pfq_netif_rx_ni);
#endif

#ifdef PFQ_HAVE_NETIF_RX_ANY_CONTEXT
int pfq_netif_rx_any_context(struct sk_buff *skb)
{
	enum pfq_verdict v = pfq_rx_dev(skb->dev, PFQ_HOOK_NETIF_RX_ANY_CONTEXT, skb,
					pfq_mac_offset(skb));

	if (likely(v == PFQ_TO_STACK))
		return netif_rx_any_context(skb);
	return pfq_rx_verdict(skb, v);
}
EXPORT_SYMBOL_GPL(pfq_netif_rx_any_context);
#endif
