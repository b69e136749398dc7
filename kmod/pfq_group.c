// SPDX-License-Identifier: GPL-2.0
/*
 * Groups: endpoints that share the frames of the devices they are bound to.
 *
 * A group's configuration (its endpoints, steering mode, BPF program and VLAN filter)
 * is one struct pfq_group_conf, replaced whole under pfq_groups_mutex and read by the
 * hooks under RCU; the one it replaces is freed, with its program when the new one
 * does not keep it, by an RCU callback, so a hook never sees a program that is gone and
 * no grace period is waited for under a lock. A device lists the groups bound to it in
 * pfq_dev.groups (RTNL and pfq_groups_mutex to change), which the hooks read only in
 * tap and capture mode: pass never looks at groups.
 *
 * A group lives while it has endpoints: its first endpoint makes it (in the
 * endpoint's network namespace), its last one leaving unbinds it from every device and
 * resets it. RTNL is taken only where bindings change (bind, unbind, the last leave).
 * Lock order: RTNL, then pfq_groups_mutex, then an endpoint's lock. An endpoint that
 * left may still be seen by hooks until a grace period ends: its owner waits for one
 * (with no lock held) before freeing it.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/filter.h>
#include <linux/if_vlan.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/jhash.h>
#include <linux/mutex.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <net/ip.h>
#include <net/net_namespace.h>

#include "pfq.h"
#include "pfq_dev.h"
#include "pfq_endpoint.h"
#include "pfq_group.h"

/* A group's configuration: replaced whole (RCU) on every change, never modified. */
struct pfq_group_conf {
	struct rcu_head rcu;
	u32 steer;			/* enum pfq_steer */
	struct bpf_prog *prog;		/* classic BPF, NULL: every frame passes */
	bool owns_prog;			/* @prog goes when this configuration is freed */
	u32 prog_len;			/* its instructions, for /proc */
	u32 prog_hash;			/* of its instructions: a shared filter's check */
	bool steer_set;			/* a member set @steer: shared steering is decided */
	bool prog_set;			/* a member set @prog (or none): shared filter too */
	bool vlan_enabled;
	bool vlan_untagged;
	DECLARE_BITMAP(vids, PFQ_VLAN_IDS);
	u32 n;				/* endpoints in @ep */
	struct pfq_endpoint *ep[PFQ_GROUP_ENDPOINTS];
};

/* One CPU's counters of one group: received = filtered + delivered + dropped. */
struct pfq_group_counters {
	u64 received;	/* frames of its devices (and queues) it looked at */
	u64 filtered;	/* refused by its VLAN or BPF filter */
	u64 delivered;	/* put in the ring of at least one endpoint */
	u64 dropped;	/* taken by no endpoint: rings full, or no endpoint */
};

static DEFINE_MUTEX(pfq_groups_mutex);

struct pfq_group {
	struct pfq_group_conf __rcu *conf;	/* NULL while it has no endpoint */
	struct net *net;			/* of its endpoints, while it has some */
	atomic_t rr;				/* next endpoint, rr steering */
	struct pfq_group_counters __percpu *stats;
};

static struct pfq_group pfq_groups[PFQ_GROUPS];
static u32 pfq_hash_seed;

static const char *const pfq_steer_names[PFQ_STEER_MAX] = {
	[PFQ_STEER_COPY] = "copy",
	[PFQ_STEER_RR] = "rr",
	[PFQ_STEER_HASH] = "hash",
	[PFQ_STEER_CPU] = "cpu",
	[PFQ_STEER_QUEUE] = "queue",
	[PFQ_STEER_RND] = "rnd",
};

/* -- the receive side (any context, under rcu_read_lock()) ------------------------- */

/* The ports of a TCP, UDP, UDP-Lite or SCTP header at @l4 (-1: none), as one word. */
static __always_inline u32 pfq_ports(const struct sk_buff *skb, u8 proto, int l4)
{
	__be16 buf[2], *ports;

	if (l4 < 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP &&
		       proto != IPPROTO_UDPLITE && proto != IPPROTO_SCTP))
		return 0;
	ports = skb_header_pointer(skb, l4, sizeof(buf), buf);
	return ports ? (u32)ntohs(ports[0]) << 16 | ntohs(ports[1]) : 0;
}

/* Swap the two ports of pfq_ports()'s word. */
static u32 pfq_ports_swapped(u32 ports)
{
	return ports << 16 | ports >> 16;
}

/*
 * Hash the two ends (address, port) of a flow in an order that does not depend on the
 * direction: both directions of a connection get the same value. IPv4's ends fit in
 * three words: one jhash_3words() per frame.
 */
static u32 pfq_sym_hash_v4(const struct iphdr *iph, u32 ports)
{
	u32 a = (__force u32)iph->saddr, b = (__force u32)iph->daddr;

	if (a > b || (a == b && ports >> 16 > (ports & 0xffff))) {
		swap(a, b);
		ports = pfq_ports_swapped(ports);
	}
	return jhash_3words(a, b, ports, pfq_hash_seed + iph->protocol);
}

/* The same for longer addresses (IPv6, MAC pairs), @alen bytes each. */
static u32 pfq_sym_hash(const void *a, const void *b, unsigned int alen, u8 proto,
			u32 ports)
{
	u32 key[10] = {};
	int cmp;

	cmp = memcmp(a, b, alen);
	if (cmp > 0 || (cmp == 0 && ports >> 16 > (ports & 0xffff))) {
		swap(a, b);
		ports = pfq_ports_swapped(ports);
	}
	memcpy(key, a, alen);
	memcpy(key + 4, b, alen);
	key[8] = ports;
	key[9] = proto;
	return jhash2(key, ARRAY_SIZE(key), pfq_hash_seed);
}

/*
 * A flow's hash from the frame itself (the Ethernet header at @offset from skb->data):
 * IPv4 and IPv6 by addresses, and ports for TCP, UDP, UDP-Lite and SCTP (not for
 * fragments after the first); up to two VLAN tags skipped; anything else by its MAC
 * pair. The same on every hook, whatever the driver parsed. Not inlined: its buffers
 * would weigh on every frame of every group, hash-steered or not.
 */
static noinline u32 pfq_flow_hash(const struct sk_buff *skb, int offset)
{
	struct ethhdr ebuf, *eth = skb_header_pointer(skb, offset, sizeof(ebuf), &ebuf);
	int nh = offset + ETH_HLEN, tags;
	struct vlan_hdr vbuf, *vh;
	struct ipv6hdr i6buf, *ip6;
	struct iphdr ibuf, *iph;
	__be16 proto;

	if (!eth)
		return 0;
	proto = eth->h_proto;
	for (tags = 0; tags < 2 && eth_type_vlan(proto); tags++) {
		vh = skb_header_pointer(skb, nh, sizeof(vbuf), &vbuf);
		if (!vh)
			break;
		proto = vh->h_vlan_encapsulated_proto;
		nh += VLAN_HLEN;
	}
	if (proto == htons(ETH_P_IP)) {
		iph = skb_header_pointer(skb, nh, sizeof(ibuf), &ibuf);
		if (iph && iph->ihl >= 5)
			return pfq_sym_hash_v4(iph, pfq_ports(skb, iph->protocol,
						iph->frag_off & htons(IP_OFFSET) ? -1 :
						nh + iph->ihl * 4));
	} else if (proto == htons(ETH_P_IPV6)) {
		ip6 = skb_header_pointer(skb, nh, sizeof(i6buf), &i6buf);
		if (ip6)
			return pfq_sym_hash(&ip6->saddr, &ip6->daddr, 16, ip6->nexthdr,
					    pfq_ports(skb, ip6->nexthdr, nh + sizeof(*ip6)));
	}
	return pfq_sym_hash(eth->h_source, eth->h_dest, ETH_ALEN, 0, 0);
}

/*
 * Does the frame pass the group's VLAN filter? A tag the NIC stripped counts. Not
 * inlined, as pfq_flow_hash().
 */
static noinline bool pfq_vlan_pass(const struct pfq_group_conf *conf,
				   const struct sk_buff *skb, int offset)
{
	struct vlan_ethhdr vbuf;
	const struct vlan_ethhdr *veth;
	u16 vid;

	if (skb_vlan_tag_present(skb)) {
		vid = skb_vlan_tag_get_id(skb);
	} else {
		veth = skb_header_pointer(skb, offset, sizeof(vbuf), &vbuf);
		if (!veth || !eth_type_vlan(veth->h_vlan_proto))
			return conf->vlan_untagged;
		vid = ntohs(veth->h_vlan_TCI) & VLAN_VID_MASK;
	}
	return test_bit(vid, conf->vids);
}

/*
 * Run the group's classic BPF program as an AF_PACKET socket filter runs: on the frame
 * from its Ethernet header on. Returns the bytes to keep, 0 to refuse the frame.
 */
static u32 pfq_run_filter(const struct bpf_prog *prog, struct sk_buff *skb, int offset)
{
	u32 res;

	if (offset < 0)
		__skb_push(skb, -offset);
	res = bpf_prog_run_save_cb(prog, skb);
	if (offset < 0)
		__skb_pull(skb, -offset);
	return res;
}

static u32 pfq_steer_index(struct pfq_group *group, const struct pfq_group_conf *conf,
			   const struct sk_buff *skb, int offset)
{
	switch (conf->steer) {
	case PFQ_STEER_RR:
		return (u32)atomic_inc_return(&group->rr) % conf->n;
	case PFQ_STEER_HASH:
		return reciprocal_scale(pfq_flow_hash(skb, offset), conf->n);
	case PFQ_STEER_CPU:
		return raw_smp_processor_id() % conf->n;
	case PFQ_STEER_QUEUE:
		return (skb_rx_queue_recorded(skb) ? skb_get_rx_queue(skb) : 0) % conf->n;
	default:
		return reciprocal_scale(get_random_u32(), conf->n);
	}
}

static enum pfq_groups_rx pfq_group_rx(struct pfq_group *group, s32 queue,
				       struct sk_buff *skb, int offset, u64 tstamp_ns)
{
	const struct pfq_group_conf *conf = rcu_dereference(group->conf);
	u32 snap = U32_MAX, i;
	bool stored = false;

	if (!conf)
		return PFQ_GROUPS_IGNORED;
	if (queue >= 0 && (!skb_rx_queue_recorded(skb) || skb_get_rx_queue(skb) != queue))
		return PFQ_GROUPS_IGNORED;
	this_cpu_inc(group->stats->received);
	if (conf->vlan_enabled && !pfq_vlan_pass(conf, skb, offset))
		goto filtered;
	if (conf->prog) {
		snap = pfq_run_filter(conf->prog, skb, offset);
		if (!snap)
			goto filtered;
	}
	if (conf->steer == PFQ_STEER_COPY) {
		for (i = 0; i < conf->n; i++)
			stored |= pfq_endpoint_put(conf->ep[i], skb, offset, snap, tstamp_ns);
	} else if (conf->n) {
		i = pfq_steer_index(group, conf, skb, offset);
		stored = pfq_endpoint_put(conf->ep[i], skb, offset, snap, tstamp_ns);
	}
	if (stored) {
		this_cpu_inc(group->stats->delivered);
		return PFQ_GROUPS_TAKEN;
	}
	this_cpu_inc(group->stats->dropped);
	return PFQ_GROUPS_FULL;
filtered:
	this_cpu_inc(group->stats->filtered);
	return PFQ_GROUPS_IGNORED;
}

/*
 * Feed the frame to the @groups bound to @pd, stamped @tstamp_ns (one clock read for
 * every copy of it); each group filters and steers it once. PFQ_GROUPS_TAKEN when an
 * endpoint took it, else PFQ_GROUPS_FULL when a group wanted it (the device counts a
 * drop, pfq_rx()).
 */
enum pfq_groups_rx pfq_groups_rx(struct pfq_dev *pd, u64 groups, struct sk_buff *skb,
				 int offset, u64 tstamp_ns)
{
	enum pfq_groups_rx ret = PFQ_GROUPS_IGNORED;
	unsigned int g;

	while (groups) {
		g = __ffs64(groups);
		groups &= groups - 1;
		ret = max(ret, pfq_group_rx(&pfq_groups[g], READ_ONCE(pd->group_queue[g]), skb,
					    offset, tstamp_ns));
	}
	return ret;
}

/* -- configuration (process context) ----------------------------------------------- */

static struct pfq_group_conf *pfq_conf(struct pfq_group *group)
{
	return rcu_dereference_protected(group->conf, lockdep_is_held(&pfq_groups_mutex));
}

/* A copy of the group's configuration to change and publish. */
static struct pfq_group_conf *pfq_conf_copy(struct pfq_group *group)
{
	struct pfq_group_conf *old = pfq_conf(group);

	return old ? kmemdup(old, sizeof(*old), GFP_KERNEL) :
		kzalloc(sizeof(*old), GFP_KERNEL);
}

/*
 * A configuration no hook can hold any more. Softirq context: a classic program's
 * release defers its own freeing, as a socket filter's does (sk_filter_release_rcu()).
 */
static void pfq_conf_free_rcu(struct rcu_head *rcu)
{
	struct pfq_group_conf *conf = container_of(rcu, struct pfq_group_conf, rcu);

	if (conf->owns_prog)
		bpf_prog_destroy(conf->prog);
	kfree(conf);
}

/*
 * Make @conf (NULL: none) the group's; the one it replaces is freed once no hook can
 * hold it, with its program unless @conf keeps it. Does not wait. Caller holds
 * pfq_groups_mutex.
 */
static void pfq_conf_publish(struct pfq_group *group, struct pfq_group_conf *conf)
{
	struct pfq_group_conf *old = pfq_conf(group);

	rcu_assign_pointer(group->conf, conf);
	if (!old)
		return;
	/* Hooks still reading @old never look at owns_prog. */
	old->owns_prog = old->prog && (!conf || conf->prog != old->prog);
	call_rcu(&old->rcu, pfq_conf_free_rcu);
}

static void pfq_group_unbind_all(unsigned int g)
{
	struct pfq_dev *pd;

	ASSERT_RTNL();
	list_for_each_entry(pd, &pfq_dev_list, node)
		WRITE_ONCE(pd->groups, pd->groups & ~BIT_ULL(g));
}

/* The lowest group with no endpoint, or PFQ_GROUPS. Caller holds pfq_groups_mutex. */
static u32 pfq_group_free(void)
{
	u32 g;

	for (g = 0; g < PFQ_GROUPS; g++)
		if (!pfq_conf(&pfq_groups[g]))
			break;
	return g;
}

int pfq_group_join(struct pfq_endpoint *ep, u32 g)
{
	struct pfq_group_conf *conf;
	struct pfq_group *group;
	int err = 0, cpu;

	if (g >= PFQ_GROUPS && g != PFQ_GROUP_ANY) {
		pr_warn_ratelimited("endpoint %u: group %u is out of range (0..%u)\n", ep->id, g,
			PFQ_GROUPS - 1);
		return -EINVAL;
	}
	mutex_lock(&pfq_groups_mutex);
	if (g == PFQ_GROUP_ANY) {
		g = pfq_group_free();
		if (g == PFQ_GROUPS) {
			err = -EBUSY;
			goto out;
		}
	}
	group = &pfq_groups[g];
	conf = pfq_conf(group);
	if (ep->group >= 0 || (conf && (!net_eq(group->net, ep->net) ||
					conf->n == PFQ_GROUP_ENDPOINTS))) {
		/* In a group already, or this one is another namespace's, or full. */
		err = -EBUSY;
		goto out;
	}
	if (!conf) {
		for_each_possible_cpu(cpu)
			memset(per_cpu_ptr(group->stats, cpu), 0, sizeof(*group->stats));
		atomic_set(&group->rr, 0);
		group->net = ep->net;
	}
	conf = pfq_conf_copy(group);
	if (!conf) {
		err = -ENOMEM;
		goto out;
	}
	conf->ep[conf->n++] = ep;
	pfq_conf_publish(group, conf);
	WRITE_ONCE(ep->group, g);
out:
	mutex_unlock(&pfq_groups_mutex);
	return err;
}

/*
 * Take @ep out of its group at once: the others share its frames from the next one.
 * When it was the last, the group is unbound from its devices (under RTNL, taken only
 * then) and reset. Does not wait: hooks may see @ep until a grace period ends.
 */
void pfq_group_leave(struct pfq_endpoint *ep)
{
	struct pfq_group_conf *conf, *old;
	struct pfq_group *group;
	bool rtnl = false;
	u32 i, j;

again:
	if (rtnl)
		rtnl_lock();
	mutex_lock(&pfq_groups_mutex);
	if (ep->group < 0)
		goto out;
	group = &pfq_groups[ep->group];
	old = pfq_conf(group);
	if (old->n == 1 && !rtnl) {
		/* The last one: its bindings change, and RTNL comes before our mutex. */
		mutex_unlock(&pfq_groups_mutex);
		rtnl = true;
		goto again;
	}
	conf = NULL;
	if (old->n > 1) {
		/* Leaving cannot fail: the copy is small, the allocator may not refuse it. */
		conf = kmemdup(old, sizeof(*old), GFP_KERNEL | __GFP_NOFAIL);
		for (i = 0, j = 0; i < old->n; i++)
			if (old->ep[i] != ep)
				conf->ep[j++] = old->ep[i];
		conf->n = j;
	} else {
		pfq_group_unbind_all(ep->group);
		group->net = NULL;
	}
	pfq_conf_publish(group, conf);
	WRITE_ONCE(ep->group, -1);
out:
	mutex_unlock(&pfq_groups_mutex);
	if (rtnl)
		rtnl_unlock();
}

/* The endpoint's group, or NULL (and one dmesg line) when it is in none. */
static struct pfq_group *pfq_group_of(struct pfq_endpoint *ep, const char *what)
{
	lockdep_assert_held(&pfq_groups_mutex);
	if (ep->group < 0) {
		pr_warn_ratelimited("endpoint %u: %s needs a group: join one first\n", ep->id, what);
		return NULL;
	}
	return &pfq_groups[ep->group];
}

int pfq_group_bind(struct pfq_endpoint *ep, const struct pfq_bind *bind, bool on)
{
	const char *what = on ? "bind" : "unbind";
	struct net_device *dev;
	struct pfq_group *group;
	struct pfq_dev *pd;
	u64 bit;
	int err = 0;

	if (!memchr(bind->ifname, '\0', sizeof(bind->ifname)) || bind->queue < -1 ||
	    bind->queue > U16_MAX) {
		pr_warn_ratelimited("endpoint %u: %s: bad device name or queue %d\n", ep->id, what,
			bind->queue);
		return -EINVAL;
	}
	rtnl_lock();
	mutex_lock(&pfq_groups_mutex);
	group = pfq_group_of(ep, what);
	if (!group) {
		err = -EINVAL;
		goto out;
	}
	bit = BIT_ULL(ep->group);
	/* Only the devices of the endpoint's namespace are visible to it. */
	dev = __dev_get_by_name(ep->net, bind->ifname);
	if (!dev) {
		pr_warn_ratelimited("endpoint %u: %s: unknown device '%s'\n", ep->id, what,
				    bind->ifname);
		err = -EINVAL;
		goto out;
	}
	/* Who opened the endpoint had CAP_NET_RAW in the initial namespace (pfq_open()). */
	pd = pfq_dev_lookup(dev);
	if (!pd) {
		pr_warn_ratelimited("endpoint %u: %s: PFQ tracks the devices of the initial namespace only, not '%s'\n",
			ep->id, what, bind->ifname);
		err = -EINVAL;
		goto out;
	}
	if (on) {
		WRITE_ONCE(pd->group_queue[ep->group], bind->queue);
		/* The queue before the bit that makes the hooks read it. */
		smp_store_release(&pd->groups, pd->groups | bit);
	} else if (pd->groups & bit) {
		WRITE_ONCE(pd->groups, pd->groups & ~bit);
	} else {
		pr_warn_ratelimited("endpoint %u: unbind: group %d is not bound to '%s'\n", ep->id,
			ep->group, bind->ifname);
		err = -EINVAL;
	}
out:
	mutex_unlock(&pfq_groups_mutex);
	rtnl_unlock();
	return err;
}

/*
 * A copy of @group's configuration in which to change @what, or NULL with *@err:
 * -EBUSY when the request is @shared and a member set @what (@set) to something else
 * (!@same; one dmesg line), -ENOMEM. Caller holds pfq_groups_mutex.
 */
static struct pfq_group_conf *pfq_conf_for(struct pfq_endpoint *ep, struct pfq_group *group,
					    bool shared, bool set, bool same, const char *what,
					    int *err)
{
	struct pfq_group_conf *conf;

	if (shared && set && !same) {
		pr_warn_ratelimited("endpoint %u: group %d shares its %s, set otherwise by its first member\n",
				    ep->id, ep->group, what);
		*err = -EBUSY;
		return NULL;
	}
	conf = pfq_conf_copy(group);
	if (!conf)
		*err = -ENOMEM;
	return conf;
}

int pfq_group_steer(struct pfq_endpoint *ep, u32 arg)
{
	bool shared = arg & PFQ_STEER_SHARED;
	u32 steer = arg & ~PFQ_STEER_SHARED;
	struct pfq_group_conf *conf, *now;
	struct pfq_group *group;
	int err = 0;

	if (steer >= PFQ_STEER_MAX) {
		pr_warn_ratelimited("endpoint %u: unknown steering mode %u (0..%u)\n", ep->id, steer,
			PFQ_STEER_MAX - 1);
		return -EINVAL;
	}
	mutex_lock(&pfq_groups_mutex);
	group = pfq_group_of(ep, "steering");
	if (!group) {
		err = -EINVAL;
		goto out;
	}
	now = pfq_conf(group);
	conf = pfq_conf_for(ep, group, shared, now->steer_set, now->steer == steer, "steering",
			    &err);
	if (conf) {
		conf->steer = steer;
		conf->steer_set = true;
		pfq_conf_publish(group, conf);
	}
out:
	mutex_unlock(&pfq_groups_mutex);
	return err;
}

/*
 * Check and load a classic BPF program with the kernel's own checker; len 0: none.
 * @hash: of its instructions as given (0 for none), to compare shared filters.
 */
static int pfq_filter_load(struct pfq_endpoint *ep, const struct pfq_filter *filter,
			   struct bpf_prog **prog, u32 *hash)
{
	struct sock_fprog_kern fprog = { .len = filter->len };
	struct sock_filter *insns;
	int err;

	*prog = NULL;
	*hash = 0;
	if (filter->flags & ~PFQ_FILTER_SHARED) {
		pr_warn_ratelimited("endpoint %u: unknown filter flags %#x\n", ep->id, filter->flags);
		return -EINVAL;
	}
	if (!filter->len)
		return 0;
	if (filter->len > BPF_MAXINSNS) {
		pr_warn_ratelimited("endpoint %u: BPF program of %u instructions (at most %u)\n", ep->id,
			filter->len, BPF_MAXINSNS);
		return -EINVAL;
	}
	insns = memdup_user(u64_to_user_ptr(filter->insns),
			    array_size(filter->len, sizeof(*insns)));
	if (IS_ERR(insns))
		return PTR_ERR(insns);
	fprog.filter = insns;
	*hash = jhash(insns, array_size(filter->len, sizeof(*insns)), 0);
	/* Copies the program, after bpf_check_classic() has accepted it. */
	err = bpf_prog_create(prog, &fprog);
	kfree(insns);
	if (err) {
		pr_warn_ratelimited("endpoint %u: the kernel refused the BPF program (error %d)\n", ep->id,
			err);
		return -EINVAL;
	}
	return 0;
}

int pfq_group_filter(struct pfq_endpoint *ep, const struct pfq_filter *filter)
{
	bool shared = filter->flags & PFQ_FILTER_SHARED;
	struct pfq_group_conf *conf = NULL, *now;
	struct pfq_group *group;
	struct bpf_prog *prog;
	u32 hash;
	int err;

	err = pfq_filter_load(ep, filter, &prog, &hash);
	if (err)
		return err;
	mutex_lock(&pfq_groups_mutex);
	group = pfq_group_of(ep, "a filter");
	if (!group) {
		err = -EINVAL;
		goto out;
	}
	now = pfq_conf(group);
	conf = pfq_conf_for(ep, group, shared, now->prog_set,
			    now->prog_len == filter->len && now->prog_hash == hash, "filter", &err);
	if (conf) {
		conf->prog = prog;
		conf->prog_len = filter->len;
		conf->prog_hash = hash;
		conf->prog_set = true;
		pfq_conf_publish(group, conf);
	}
out:
	mutex_unlock(&pfq_groups_mutex);
	if (!conf && prog)
		bpf_prog_destroy(prog);
	return err;
}

int pfq_group_vlan(struct pfq_endpoint *ep, const struct pfq_vlan *vlan)
{
	struct pfq_group_conf *conf;
	struct pfq_group *group;
	int err = 0;
	u32 vid;

	if (vlan->enabled > 1 || vlan->untagged > 1) {
		pr_warn_ratelimited("endpoint %u: VLAN filter: enabled and untagged are 0 or 1\n", ep->id);
		return -EINVAL;
	}
	mutex_lock(&pfq_groups_mutex);
	group = pfq_group_of(ep, "a VLAN filter");
	conf = group ? pfq_conf_copy(group) : NULL;
	if (conf) {
		conf->vlan_enabled = vlan->enabled;
		conf->vlan_untagged = vlan->untagged;
		bitmap_zero(conf->vids, PFQ_VLAN_IDS);
		for (vid = 0; vid < PFQ_VLAN_IDS; vid++)
			if (vlan->vids[vid / 64] & BIT_ULL(vid % 64))
				__set_bit(vid, conf->vids);
		pfq_conf_publish(group, conf);
	} else {
		err = group ? -ENOMEM : -EINVAL;
	}
	mutex_unlock(&pfq_groups_mutex);
	return err;
}

/* -- /proc/net/pfq/groups ------------------------------------------------------------ */

static void pfq_group_sum(struct pfq_group *group, struct pfq_group_counters *sum)
{
	int cpu;

	memset(sum, 0, sizeof(*sum));
	for_each_possible_cpu(cpu) {
		const struct pfq_group_counters *c = per_cpu_ptr(group->stats, cpu);

		sum->received += READ_ONCE(c->received);
		sum->filtered += READ_ONCE(c->filtered);
		sum->delivered += READ_ONCE(c->delivered);
		sum->dropped += READ_ONCE(c->dropped);
	}
}

/* One line per group that has endpoints. */
void pfq_groups_show(struct seq_file *m)
{
	struct pfq_group_counters sum;
	struct pfq_group_conf *conf;
	struct pfq_dev *pd;
	const char *sep;
	unsigned int g;

	rtnl_lock();
	mutex_lock(&pfq_groups_mutex);
	for (g = 0; g < PFQ_GROUPS; g++) {
		conf = pfq_conf(&pfq_groups[g]);
		if (!conf)
			continue;
		pfq_group_sum(&pfq_groups[g], &sum);
		seq_printf(m, "group=%u steer=%s endpoints=%u bpf=%u vlan=%s received=%llu filtered=%llu delivered=%llu dropped=%llu devices=",
			   g, pfq_steer_names[conf->steer], conf->n, conf->prog_len,
			   !conf->vlan_enabled ? "off" : conf->vlan_untagged ? "on+untagged" : "on",
			   sum.received, sum.filtered, sum.delivered, sum.dropped);
		sep = "";
		list_for_each_entry(pd, &pfq_dev_list, node) {
			if (!(pd->groups & BIT_ULL(g)))
				continue;
			seq_printf(m, "%s%s", sep, pd->dev->name);
			if (pd->group_queue[g] >= 0)
				seq_printf(m, "@%d", pd->group_queue[g]);
			sep = ",";
		}
		seq_putc(m, '\n');
	}
	mutex_unlock(&pfq_groups_mutex);
	rtnl_unlock();
}

int pfq_groups_init(void)
{
	unsigned int g;

	pfq_hash_seed = get_random_u32();
	for (g = 0; g < PFQ_GROUPS; g++) {
		pfq_groups[g].stats = alloc_percpu(struct pfq_group_counters);
		if (!pfq_groups[g].stats) {
			pfq_groups_exit();
			return -ENOMEM;
		}
	}
	return 0;
}

/* After /dev/pfq is gone: no endpoint, so no group has a configuration. */
void pfq_groups_exit(void)
{
	unsigned int g;

	/* Configurations replaced last are freed by callbacks of this module. */
	rcu_barrier();
	for (g = 0; g < PFQ_GROUPS; g++) {
		WARN_ON(rcu_access_pointer(pfq_groups[g].conf));
		free_percpu(pfq_groups[g].stats);
		pfq_groups[g].stats = NULL;
	}
}
