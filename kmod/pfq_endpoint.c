// SPDX-License-Identifier: GPL-2.0
/*
 * An endpoint: what one open file of /dev/pfq (pfq_file.c) holds, a ring the hooks fill
 * through the groups (pfq_group.c) and its reader empties.
 *
 * The ring of an endpoint is one struct pfq_area (pfq_mem.c: charged to the caller's
 * memory cgroup, RLIMIT_MEMLOCK and the module's cap): a page of struct pfq_ring_head,
 * then the slots. It is made on the first PFQ_IOC_RING, join, mmap() or read(), and
 * keeps its size from then on, so the hooks and a mapping never see it move.
 *
 * The ring has many producers (the hooks, on every CPU, in softirq or hard irq) and one
 * consumer, and no lock. A producer reserves frame number n by advancing @reserved from
 * n to n + 1 with one compare-and-exchange, after checking that slot n % slots is free
 * (n - tail < slots: the reader has moved past frame n - slots); it copies the frame
 * into the slot and publishes it by storing seq = n + 1 last, with release semantics.
 * The reader takes frame `tail` once its seq says so (load-acquire), then advances tail
 * with a store-release. Frames are published out of order when producers race (a
 * hard irq may fill slot n + 1 while the softirq it interrupted still copies into n);
 * the reader waits at n, which is never long: producers do not sleep. When the reader's
 * tail is a whole ring behind (or is nonsense: it is user memory), the frame is dropped
 * and counted; nothing waits, nothing allocates.
 *
 * Wake-ups: a reader sleeps (read(), poll()) only after finding fewer than W frames
 * reserved past its tail, W being the ring head's wake_after (1 unless the reader asks
 * for a batch). The producer that reserves frame tail + W - 1 is the one to wake it,
 * after publishing. So frames that arrive while the reader is awake cost no wake-up,
 * and a sleeping reader is woken once per sleep; see pfq_endpoint_put() for the
 * barriers that keep it from sleeping through its frame. A reader that asks for a batch
 * polls with a timeout for the frames short of one (libpcap's reads do).
 *
 * An endpoint is freed only once out of its group, after a wait, with no lock held,
 * for the hooks that could still see it, so no frame is ever delivered to a freed one.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/if_vlan.h>
#include <linux/mm.h>
#include <linux/nsproxy.h>
#include <linux/poll.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <net/net_namespace.h>

#include "pfq.h"
#include "pfq_endpoint.h"
#include "pfq_mem.h"
#include "pfq_params.h"
#include "pfq_ring.h"

/* The largest ring an endpoint may ask for: what one vmalloc area should hold. */
#define PFQ_RING_MAX_BYTES	(1ULL << 30)

static atomic_t pfq_endpoint_ids = ATOMIC_INIT(0);
/* Every open endpoint, for /proc/net/pfq/groups; nothing else is done under it. */
static DEFINE_MUTEX(pfq_endpoints_mutex);
static LIST_HEAD(pfq_endpoints);

/*
 * How many frames past its tail wake the sleeping reader: the ring head's wake_after,
 * 1 to the ring's slots (the reader's memory: any value is safe).
 */
static u64 pfq_endpoint_wake_after(const struct pfq_endpoint *ep,
				   const struct pfq_ring_head *ring)
{
	return clamp_t(u32, READ_ONCE(ring->wake_after), 1, ep->slots);
}

static size_t pfq_slot_size(u32 caplen)
{
	return ALIGN(sizeof(struct pfq_frame) + caplen, PFQ_SLOT_ALIGN);
}

/* Make the ring of @ep with @info's sizes (0: the module's). Caller holds ring_mutex. */
static int pfq_endpoint_make_ring(struct pfq_endpoint *ep, struct pfq_ring_info *info)
{
	u32 slots = info->slots ?: pfq_ring_slots;
	u32 caplen = info->caplen ?: pfq_snaplen;
	struct pfq_ring_head *ring;
	u64 bytes;
	int err;

	if (slots > (1U << 20) || caplen < 64 || caplen > 65535) {
		pr_warn_ratelimited("endpoint %u: ring of %u slots of %u bytes is out of range (1..1048576 slots, 64..65535 bytes)\n",
			ep->id, slots, caplen);
		return -EINVAL;
	}
	bytes = PAGE_SIZE + (u64)slots * pfq_slot_size(caplen);
	if (bytes > PFQ_RING_MAX_BYTES) {
		pr_warn_ratelimited("endpoint %u: a ring of %llu bytes is more than %llu\n", ep->id,
				    bytes, PFQ_RING_MAX_BYTES);
		return -EINVAL;
	}
	err = pfq_area_alloc(&ep->area, bytes);
	if (err)
		return err;
	ring = ep->area.addr;
	ring->magic = PFQ_RING_MAGIC;
	ring->version = PFQ_RING_VERSION;
	ring->slots = slots;
	ring->slot_size = pfq_slot_size(caplen);
	ring->caplen = caplen;
	ring->data_offset = PAGE_SIZE;
	ep->ring_size = PAGE_ALIGN(bytes);
	ep->slots = slots;
	ep->slot_size = pfq_slot_size(caplen);
	ep->caplen = caplen;
	ep->slot0 = (u8 *)ring + PAGE_SIZE;
	/* Complete before poll() or a hook can see it. */
	smp_store_release(&ep->ring, ring);
	return 0;
}

/* The ring of @ep, made with the module's sizes when it has none yet. */
int pfq_endpoint_ensure_ring(struct pfq_endpoint *ep)
{
	struct pfq_ring_info info = {};
	int err = 0;

	mutex_lock(&ep->ring_mutex);
	if (!ep->ring)
		err = pfq_endpoint_make_ring(ep, &info);
	mutex_unlock(&ep->ring_mutex);
	return err;
}

static void pfq_endpoint_ring_info(const struct pfq_endpoint *ep, struct pfq_ring_info *info)
{
	info->slots = ep->slots;
	info->caplen = ep->caplen;
	info->slot_size = ep->slot_size;
	info->data_offset = ep->slot0 - (u8 *)ep->ring;
	info->mmap_size = ep->ring_size;
}

/* PFQ_IOC_RING: make the ring with @info's sizes, or check them against the one made. */
int pfq_endpoint_ring(struct pfq_endpoint *ep, struct pfq_ring_info *info)
{
	int err = 0;

	mutex_lock(&ep->ring_mutex);
	if (!ep->ring) {
		err = pfq_endpoint_make_ring(ep, info);
	} else if ((info->slots && info->slots != ep->slots) ||
		   (info->caplen && info->caplen != ep->caplen)) {
		/* It may be mapped, and hooks may be filling it: it keeps its size. */
		err = -EBUSY;
	}
	if (!err)
		pfq_endpoint_ring_info(ep, info);
	mutex_unlock(&ep->ring_mutex);
	return err;
}

static struct pfq_frame *pfq_endpoint_slot(const struct pfq_endpoint *ep, u64 n)
{
	return (struct pfq_frame *)(ep->slot0 + (size_t)(n % ep->slots) * ep->slot_size);
}

/*
 * Copy the frame (from @offset bytes off skb->data, see pfq_ring_put()) into the next
 * slot, at most @snap bytes (what the group's BPF program kept), stamped @tstamp_ns.
 * False when the ring is full. Any context; the caller holds rcu_read_lock(), which
 * keeps @ep alive.
 */
bool pfq_endpoint_put(struct pfq_endpoint *ep, struct sk_buff *skb, int offset, u32 snap,
		      u64 tstamp_ns)
{
	/* Pairs with make_ring's smp_store_release(): the geometry before the ring. */
	struct pfq_ring_head *ring = smp_load_acquire(&ep->ring);
	u32 len = pfq_frame_len(skb, offset);
	struct pfq_frame *frame;
	bool wakes, stored;
	u64 n, tail;
	u32 caplen;

	if (unlikely(!ring))
		return false;
	n = atomic64_read(&ep->reserved);
	do {
		/* The reader is done with slot n % slots once its tail passed n - slots: its
		 * store-release of tail after reading the slot pairs with this acquire.
		 */
		tail = smp_load_acquire(&ring->tail);
		if (n - tail >= ep->slots) {
			atomic64_inc(&ep->full);
			return false;
		}
	} while (!atomic64_try_cmpxchg(&ep->reserved, &n, n + 1));
	/*
	 * The reader may be asleep waiting for frame n. It went to sleep after storing
	 * tail and wake_after, adding itself to @wait and then (a full barrier between)
	 * finding fewer than wake_after frames reserved past tail. Here the successful
	 * cmpxchg, fully ordered, comes before these loads of tail and wake_after: either
	 * the reader saw reserved > n and did not sleep, or these loads see what it stored
	 * and the wake-up below is done (store-buffering, both sides).
	 */
	wakes = n - READ_ONCE(ring->tail) == pfq_endpoint_wake_after(ep, ring) - 1;
	frame = pfq_endpoint_slot(ep, n);
	caplen = min3(len, ep->caplen, snap);
	stored = !pfq_copy_frame(skb, offset, (u8 *)(frame + 1), caplen);
	if (likely(stored)) {
		frame->flags = skb_vlan_tag_present(skb) ? PFQ_FRAME_VLAN : 0;
	} else {
		/* The skb is shorter than it says: publish the slot empty, the reader skips it. */
		caplen = 0;
		frame->flags = PFQ_FRAME_EMPTY;
		atomic64_inc(&ep->lost);
	}
	frame->tstamp_ns = tstamp_ns;
	frame->len = len;
	frame->caplen = caplen;
	frame->ifindex = skb->dev ? skb->dev->ifindex : 0;
	frame->queue = skb_rx_queue_recorded(skb) ? skb_get_rx_queue(skb) : 0;
	frame->vlan_tci = skb_vlan_tag_present(skb) ? skb_vlan_tag_get(skb) : 0;
	/* The slot before its number, which the reader load-acquires. */
	smp_store_release(&frame->seq, (u32)(n + 1));
	/* wq_has_sleeper()'s barrier orders the reserve above before the look at @wait,
	 * against the reader's add to @wait before its look at @reserved.
	 */
	if (wakes && wq_has_sleeper(&ep->wait))
		wake_up_interruptible(&ep->wait);
	return stored;
}

/*
 * Whether a reader should stay awake: wake_after frames are reserved past its tail
 * (published, or being copied by a producer that will wake it), or its tail is
 * nonsense (ahead of them: the read says so). Callers add themselves to @wait first
 * (wait_event's prepare_to_wait(), poll_wait()) and put a full barrier between (see
 * pfq_endpoint_put()). The ring pointer is published with smp_store_release().
 */
static bool pfq_endpoint_readable(struct pfq_endpoint *ep)
{
	/* Pairs with make_ring's smp_store_release(). */
	struct pfq_ring_head *ring = smp_load_acquire(&ep->ring);

	return ring && atomic64_read(&ep->reserved) - READ_ONCE(ring->tail) >=
		       pfq_endpoint_wake_after(ep, ring);
}

/*
 * A new endpoint of the caller's network namespace, in no group and with no ring yet,
 * charged to the caller's memory cgroup. Waits on nothing but a short list lock.
 */
struct pfq_endpoint *pfq_endpoint_alloc(void)
{
	struct pfq_endpoint *ep;

	ep = kzalloc(sizeof(*ep), GFP_KERNEL_ACCOUNT);
	if (!ep)
		return NULL;
	mutex_init(&ep->ring_mutex);
	mutex_init(&ep->read_mutex);
	init_waitqueue_head(&ep->wait);
	ep->net = get_net(current->nsproxy->net_ns);
	ep->group = -1;
	ep->id = atomic_inc_return(&pfq_endpoint_ids);
	ep->pid = task_tgid_nr(current);
	mutex_lock(&pfq_endpoints_mutex);
	list_add_tail(&ep->node, &pfq_endpoints);
	mutex_unlock(&pfq_endpoints_mutex);
	return ep;
}

/* Free @ep, which has left its group (pfq_group_leave()). Process context, no lock held. */
void pfq_endpoint_free(struct pfq_endpoint *ep)
{
	mutex_lock(&pfq_endpoints_mutex);
	list_del(&ep->node);
	mutex_unlock(&pfq_endpoints_mutex);
	/* Hooks found it through a group configuration under RCU: wait them out, with
	 * no lock held, before its ring goes.
	 */
	if (ep->ring)
		synchronize_rcu();
	pfq_area_free(&ep->area);
	put_net(ep->net);
	kfree(ep);
}

/* Runs with mmap_lock held for writing: takes ring_mutex only, which no one holds
 * across a user copy.
 */
int pfq_endpoint_mmap(struct pfq_endpoint *ep, struct vm_area_struct *vma)
{
	int err;

	/* A private mapping would keep the reader's tail from the kernel. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	err = pfq_endpoint_ensure_ring(ep);
	if (err)
		return err;
	if (vma->vm_pgoff || vma->vm_end - vma->vm_start > ep->ring_size)
		return -EINVAL;
	return remap_vmalloc_range(vma, ep->ring, 0);
}

/*
 * Copy the published records from frame @tail on into @buf, as many as fit in @count
 * after the @done bytes it holds, consuming them (empty slots too). Caller holds
 * read_mutex, across the user copy: ->mmap() never takes it.
 */
static int pfq_endpoint_copy_out(struct pfq_endpoint *ep, char __user *buf, size_t count,
				 u64 tail, size_t *done)
{
	struct pfq_frame *frame;
	size_t size;

	for (;; tail++) {
		frame = pfq_endpoint_slot(ep, tail);
		/* Pairs with the producer's store-release of seq: the slot after it. */
		if (smp_load_acquire(&frame->seq) != (u32)(tail + 1))
			return 0;
		if (!(READ_ONCE(frame->flags) & PFQ_FRAME_EMPTY)) {
			/* caplen is in the shared page: read it once, bound it by the slot. */
			size = sizeof(*frame) + min(READ_ONCE(frame->caplen), ep->caplen);
			if (*done + size > count)
				return 0;
			if (copy_to_user(buf + *done, frame, size))
				return -EFAULT;
			*done += size;
		}
		/* The slot is read before a producer may take it back (its
		 * smp_load_acquire() of tail in pfq_endpoint_put()).
		 */
		smp_store_release(&ep->ring->tail, tail + 1);
	}
}

/*
 * Whether frame @n, reserved and not yet published, is being copied: its slot still
 * holds the frame of the lap before (or nothing, on the first lap). Anything else means
 * the reader moved its tail back onto a slot the kernel has since reused; waiting for
 * that frame would wait forever.
 */
static bool pfq_endpoint_in_flight(const struct pfq_endpoint *ep, u64 n, u32 seq)
{
	return n < ep->slots ? seq == 0 : seq == (u32)(n + 1 - ep->slots);
}

/*
 * Whole records (struct pfq_frame, then caplen bytes), as many as fit in @count; waits
 * for the first unless O_NONBLOCK, and never returns 0: a reader that woke for a frame
 * another reader took waits again. The tail is the one mmap() readers move: a reader
 * uses one way or the other; a tail that is nonsense (user memory: more than a ring
 * behind, ahead of the frames reserved, or moved back onto reused slots) is -EIO.
 */
ssize_t pfq_endpoint_read(struct pfq_endpoint *ep, char __user *buf, size_t count,
			  bool nonblock)
{
	u64 tail, reserved;
	size_t done = 0;
	u32 seq;
	int err;

	err = pfq_endpoint_ensure_ring(ep);
	if (err)
		return err;
	if (count < sizeof(struct pfq_frame) + ep->caplen)
		return -EINVAL;
	if (mutex_lock_interruptible(&ep->read_mutex))
		return -ERESTARTSYS;
	while (!done && !err) {
		tail = READ_ONCE(ep->ring->tail);
		reserved = atomic64_read(&ep->reserved);
		if (reserved - tail > ep->slots) {
			pr_warn_ratelimited("endpoint %u: read: the ring's tail %llu is not within %u slots of %llu reserved\n",
					    ep->id, tail, ep->slots, reserved);
			err = -EIO;
			break;
		}
		/* Pairs with the producer's store-release of seq: the slot after it. */
		seq = smp_load_acquire(&pfq_endpoint_slot(ep, tail)->seq);
		if (seq != (u32)(tail + 1) && reserved != tail &&
		    !pfq_endpoint_in_flight(ep, tail, seq)) {
			pr_warn_ratelimited("endpoint %u: read: the ring's tail %llu points at a slot already reused\n",
					    ep->id, tail);
			err = -EIO;
			break;
		}
		if (seq != (u32)(tail + 1)) {
			mutex_unlock(&ep->read_mutex);
			if (reserved != tail)
				/* A producer is copying frame tail: a few microseconds at most. */
				cond_resched();
			else if (nonblock)
				return -EAGAIN;
			else if (wait_event_interruptible(ep->wait, pfq_endpoint_readable(ep)))
				return -ERESTARTSYS;
			if (mutex_lock_interruptible(&ep->read_mutex))
				return -ERESTARTSYS;
			continue;
		}
		err = pfq_endpoint_copy_out(ep, buf, count, tail, &done);
	}
	mutex_unlock(&ep->read_mutex);
	return done ?: err;
}

__poll_t pfq_endpoint_poll(struct pfq_endpoint *ep, struct file *file, poll_table *wait)
{
	poll_wait(file, &ep->wait, wait);
	/* On @wait before the look at @reserved: see pfq_endpoint_put(). */
	smp_mb();
	return pfq_endpoint_readable(ep) ? EPOLLIN | EPOLLRDNORM : 0;
}

/* received = delivered + dropped; each counter is read once, so they add up. */
static void pfq_endpoint_counts(struct pfq_endpoint *ep, u64 *received, u64 *delivered,
				u64 *dropped)
{
	u64 reserved = atomic64_read(&ep->reserved);
	u64 lost = atomic64_read(&ep->lost);
	u64 full = atomic64_read(&ep->full);

	*delivered = reserved - min(lost, reserved);
	*dropped = full + min(lost, reserved);
	*received = *delivered + *dropped;
}

/* The endpoint's counters, for PFQ_IOC_STATS. */
void pfq_endpoint_stats(struct pfq_endpoint *ep, struct pfq_endpoint_stats *stats)
{
	pfq_endpoint_counts(ep, &stats->received, &stats->delivered, &stats->dropped);
	stats->group = READ_ONCE(ep->group);
}

/* One line per open endpoint, after the groups' lines of /proc/net/pfq/groups. */
void pfq_endpoints_show(struct seq_file *m)
{
	u64 queued, received, delivered, dropped;
	struct pfq_ring_head *ring;
	struct pfq_endpoint *ep;

	mutex_lock(&pfq_endpoints_mutex);
	list_for_each_entry(ep, &pfq_endpoints, node) {
		/* Published by make_ring with smp_store_release(), geometry first. */
		ring = smp_load_acquire(&ep->ring);
		queued = ring ? min_t(u64, atomic64_read(&ep->reserved) - READ_ONCE(ring->tail),
				      ep->slots) : 0;
		pfq_endpoint_counts(ep, &received, &delivered, &dropped);
		seq_printf(m, "endpoint=%u pid=%d group=%d slots=%u caplen=%u queued=%llu received=%llu delivered=%llu dropped=%llu\n",
			   ep->id, ep->pid, READ_ONCE(ep->group), ep->slots, ep->caplen, queued,
			   received, delivered, dropped);
	}
	mutex_unlock(&pfq_endpoints_mutex);
}
