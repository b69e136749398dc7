// SPDX-License-Identifier: GPL-2.0
/*
 * The per-device table and its lifetime, and each device's mode.
 *
 * A struct pfq_dev exists for every net device of init_net (other namespaces pass
 * through the hooks uncounted). The netdevice notifier creates it on NETDEV_REGISTER
 * (replayed for existing devices when we register) and frees it, with its ring and
 * pcap file (pfq_pcap.c), on NETDEV_UNREGISTER (replayed when we unregister, so
 * unloading frees everything). All of that runs under RTNL, which also serialises the
 * control file; nothing here waits for a grace period under it: what the hooks may
 * still hold is freed by RCU callbacks, and unloading waits for those (rcu_barrier()).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/err.h>
#include <linux/hashtable.h>
#include <linux/netdevice.h>
#include <linux/rtnetlink.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <net/net_namespace.h>

#include "pfq.h"
#include "pfq_dev.h"
#include "pfq_params.h"
#include "pfq_pcap.h"
#include "pfq_ring.h"

static const char *const pfq_hook_names[PFQ_HOOK_MAX] = {
	[PFQ_HOOK_NETIF_RECEIVE_SKB] = "netif_receive_skb",
	[PFQ_HOOK_NETIF_RECEIVE_SKB_LIST] = "netif_receive_skb_list",
	[PFQ_HOOK_GRO_RECEIVE] = "napi_gro_receive",
	[PFQ_HOOK_GRO_FRAGS] = "napi_gro_frags",
	[PFQ_HOOK_NETIF_RX] = "netif_rx",
#ifdef PFQ_HAVE_NETIF_RX_NI
	[PFQ_HOOK_NETIF_RX_NI] = "netif_rx_ni",
#endif
#ifdef PFQ_HAVE_NETIF_RX_ANY_CONTEXT
	[PFQ_HOOK_NETIF_RX_ANY_CONTEXT] = "netif_rx_any_context",
#endif
};

const char *const pfq_mode_names[PFQ_MODE_MAX] = {
	[PFQ_PASS] = "pass",
	[PFQ_TAP] = "tap",
	[PFQ_CAPTURE] = "capture",
};

#define PFQ_HASH_BITS 6
static DEFINE_HASHTABLE(pfq_dev_table, PFQ_HASH_BITS);
LIST_HEAD(pfq_dev_list);

/* Caller holds rcu_read_lock() or RTNL. */
struct pfq_dev *pfq_dev_lookup(const struct net_device *dev)
{
	struct pfq_dev *pd;

	hash_for_each_possible_rcu(pfq_dev_table, pd, hnode, (unsigned long)dev,
				   lockdep_rtnl_is_held())
		if (pd->dev == dev)
			return pd;
	return NULL;
}

/* Caller holds RTNL (names change under it). */
struct pfq_dev *pfq_dev_by_name(const char *name)
{
	struct pfq_dev *pd;

	ASSERT_RTNL();
	list_for_each_entry(pd, &pfq_dev_list, node)
		if (!strcmp(pd->dev->name, name))
			return pd;
	return NULL;
}

static struct pfq_ring *pfq_dev_ring(struct pfq_dev *pd)
{
	return rcu_dereference_protected(pd->ring, lockdep_rtnl_is_held());
}

/*
 * Switch @pd to @mode. The ring exists before a hook can see tap/capture, and is
 * freed (with what it still holds) only after every hook that could have seen it has
 * left its RCU read side, by a callback: the caller holds RTNL.
 */
int pfq_dev_set_mode(struct pfq_dev *pd, enum pfq_mode mode)
{
	struct pfq_ring *ring = pfq_dev_ring(pd);

	ASSERT_RTNL();
	if (mode != PFQ_PASS && !ring) {
		ring = pfq_ring_alloc(pfq_ring_slots, pfq_snaplen);
		if (IS_ERR(ring))
			return PTR_ERR(ring);
		rcu_assign_pointer(pd->ring, ring);
	}
	WRITE_ONCE(pd->mode, mode);
	if (mode == PFQ_PASS && ring) {
		RCU_INIT_POINTER(pd->ring, NULL);
		pfq_ring_free_deferred(ring);
	}
	return 0;
}

static void pfq_dev_add(struct net_device *dev)
{
	struct pfq_dev *pd;

	if (pfq_dev_lookup(dev))
		return;
	pd = kzalloc(sizeof(*pd), GFP_KERNEL);
	if (!pd)
		goto fail;
	pd->stats = alloc_percpu(struct pfq_pcpu);
	if (!pd->stats)
		goto fail;
	pd->dev = dev;
	pd->mode = PFQ_PASS;
	if (pfq_pcap_add(pd))
		goto fail;
	list_add_tail(&pd->node, &pfq_dev_list);
	hash_add_rcu(pfq_dev_table, &pd->hnode, (unsigned long)dev);
	return;
fail:
	/* The device still works: its hooks pass packets through uncounted. */
	pr_warn("%s: out of memory, its packets will not be counted\n", dev->name);
	if (pd)
		free_percpu(pd->stats);
	kfree(pd);
}

/* Hooks that found @pd have all left: free it (any context, see pfq_ring_free()). */
static void pfq_dev_free_rcu(struct rcu_head *rcu)
{
	struct pfq_dev *pd = container_of(rcu, struct pfq_dev, rcu);

	pfq_ring_free(rcu_dereference_protected(pd->ring, true));
	free_percpu(pd->stats);
	kfree(pd);
}

static void pfq_dev_del(struct net_device *dev)
{
	struct pfq_dev *pd = pfq_dev_lookup(dev);

	if (!pd)
		return;
	hash_del_rcu(&pd->hnode);
	list_del(&pd->node);
	/* Waits for pcap readers of this device to leave; new ones get -EIO. */
	pfq_pcap_del(pd);
	/* Hooks running on other CPUs may still hold pd: freed after they leave, without
	 * making every unregistration wait a grace period under RTNL.
	 */
	call_rcu(&pd->rcu, pfq_dev_free_rcu);
}

static void pfq_dev_rename(struct net_device *dev)
{
	struct pfq_dev *pd = pfq_dev_lookup(dev);

	if (!pd)
		return;
	pfq_pcap_del(pd);
	if (pfq_pcap_add(pd))
		pr_warn("%s: cannot create its pcap file after a rename\n", dev->name);
}

static int pfq_netdev_event(struct notifier_block *nb, unsigned long event, void *ptr)
{
	struct net_device *dev = netdev_notifier_info_to_dev(ptr);

	switch (event) {
	case NETDEV_REGISTER:
		if (net_eq(dev_net(dev), &init_net))
			pfq_dev_add(dev);
		break;
	case NETDEV_UNREGISTER:
		/* Also sent when a device leaves init_net for another namespace. */
		pfq_dev_del(dev);
		break;
	case NETDEV_CHANGENAME:
		pfq_dev_rename(dev);
		break;
	}
	return NOTIFY_DONE;
}

static struct notifier_block pfq_netdev_notifier = {
	.notifier_call = pfq_netdev_event,
};

static void pfq_sum(struct pfq_dev *pd, enum pfq_hook hook, struct pfq_counters *sum)
{
	int cpu;

	memset(sum, 0, sizeof(*sum));
	for_each_possible_cpu(cpu) {
		const struct pfq_counters *c = &per_cpu_ptr(pd->stats, cpu)->hook[hook];

		sum->packets += READ_ONCE(c->packets);
		sum->bytes += READ_ONCE(c->bytes);
		sum->to_stack += READ_ONCE(c->to_stack);
		sum->captured += READ_ONCE(c->captured);
		sum->dropped += READ_ONCE(c->dropped);
	}
}

/* /proc/net/pfq/stats: one line per device and hook. */
void pfq_dev_stats_show(struct seq_file *m)
{
	struct pfq_counters sum;
	struct pfq_dev *pd;
	int hook;

	rtnl_lock();
	list_for_each_entry(pd, &pfq_dev_list, node) {
		for (hook = 0; hook < PFQ_HOOK_MAX; hook++) {
			pfq_sum(pd, hook, &sum);
			seq_printf(m, "dev=%s hook=%s mode=%s packets=%llu bytes=%llu to_stack=%llu captured=%llu dropped=%llu\n",
				   pd->dev->name, pfq_hook_names[hook],
				   pfq_mode_names[READ_ONCE(pd->mode)], sum.packets,
				   sum.bytes, sum.to_stack, sum.captured, sum.dropped);
		}
	}
	rtnl_unlock();
}

/* /proc/net/pfq/control, read: one line per device. */
void pfq_dev_control_show(struct seq_file *m)
{
	struct pfq_ring *ring;
	struct pfq_dev *pd;

	rtnl_lock();
	list_for_each_entry(pd, &pfq_dev_list, node) {
		ring = rtnl_dereference(pd->ring);
		seq_printf(m, "dev=%s mode=%s queued=%u ring_slots=%u snaplen=%u\n",
			   pd->dev->name, pfq_mode_names[pd->mode],
			   ring ? pfq_ring_count(ring) : 0, pfq_ring_slots, pfq_snaplen);
	}
	rtnl_unlock();
}

/* Replays NETDEV_REGISTER for the devices that already exist. */
int pfq_dev_init(void)
{
	return register_netdevice_notifier(&pfq_netdev_notifier);
}

void pfq_dev_exit(void)
{
	/* Replays NETDEV_UNREGISTER: frees every device's state, ring and pcap file. */
	unregister_netdevice_notifier(&pfq_netdev_notifier);
	/* The RCU callbacks that free devices and rings run this module's code. */
	rcu_barrier();
	WARN_ON(!list_empty(&pfq_dev_list));
}
