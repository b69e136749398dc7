/* SPDX-License-Identifier: GPL-2.0 */
/*
 * PFQ receive core: what the parts of pfq.ko share.
 *
 * Every net device of init_net has a struct pfq_dev, created by the netdevice
 * notifier on NETDEV_REGISTER and freed on NETDEV_UNREGISTER. Configuration (the
 * device list, modes, rings, proc entries) changes under RTNL; the receive hooks find
 * a device's state with an RCU hash lookup and count per CPU, so the pass path takes
 * no lock and touches no cache line shared between CPUs.
 */
#ifndef _PFQ_H
#define _PFQ_H

#include <linux/bitmap.h>
#include <linux/hashtable.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/percpu.h>
#include <linux/poll.h>
#include <linux/proc_fs.h>
#include <linux/rcupdate.h>
#include <linux/seq_file.h>
#include <linux/skbuff.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <pfq/uapi.h>

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
	PFQ_TAP,	/* copy to the ring, then hand to the kernel */
	PFQ_CAPTURE,	/* copy to the ring and free; the stack never sees it */
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
	u64 captured;	/* copied to the ring */
	u64 dropped;	/* not copied: ring full (or no ring yet) */
};

struct pfq_pcpu {
	struct pfq_counters hook[PFQ_HOOK_MAX];
};

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

struct pfq_dev {
	struct rcu_head rcu;		/* freed after the hooks that found it */
	struct hlist_node hnode;	/* in pfq_dev_table, RCU readers */
	struct list_head node;		/* in pfq_dev_list, RTNL */
	struct net_device *dev;		/* valid until NETDEV_UNREGISTER removes us */
	int mode;			/* enum pfq_mode; READ_ONCE on the fast path */
	struct pfq_ring __rcu *ring;	/* non-NULL in tap and capture */
	struct pfq_pcpu __percpu *stats;
	struct proc_dir_entry *pcap;	/* /proc/net/pfq/pcap/<name> */
	/* Groups bound to the device (bit g: group g), RTNL + pfq_groups_mutex to change,
	 * READ_ONCE in the hooks; and each one's rx queue, -1 for every queue.
	 */
	u64 groups;
	s32 group_queue[PFQ_GROUPS];
};

/*
 * Memory a user maps: pages charged to the caller's memory cgroup, counted against its
 * RLIMIT_MEMLOCK (unless it has CAP_IPC_LOCK) and against the module's cap, mapped
 * into one virtual area that remap_vmalloc_range() accepts (pfq_mem.c).
 */
struct pfq_area {
	void *addr;
	struct page **pages;
	unsigned long npages;
	/* Whose user's RLIMIT_MEMLOCK pays (cred->user), NULL: none. The credentials keep
	 * the user_struct alive: free_uid() is not exported before 5.11.
	 */
	const struct cred *cred;
};

/*
 * An endpoint: one open file of /dev/pfq, with its own ring (struct pfq_ring_head and
 * slots in one struct pfq_area, mmap-able). The hooks are its producers, under @lock;
 * the reader consumes through mmap (tail in the shared page) or read().
 *
 * Two mutexes, so that no lock ->mmap() takes is ever held across a user copy (whose
 * fault takes mmap_lock, which ->mmap() runs under): @ring_mutex makes the ring, and
 * ->mmap() takes it; @read_mutex serialises read() consumers, and ->mmap() never does.
 */
struct pfq_endpoint {
	spinlock_t lock;		/* producers: @khead, counters, slot contents */
	struct mutex ring_mutex;	/* making the ring; never across a user copy */
	struct mutex read_mutex;	/* read() consumers; never taken by ->mmap() */
	struct pfq_ring_head *ring;	/* NULL until sized or first used */
	struct pfq_area area;		/* the memory of @ring */
	size_t ring_size;		/* bytes of the area, page aligned */
	/* The ring's geometry as the kernel trusts it: the shared page is user memory. */
	u32 slots, slot_size, caplen;
	u8 *slot0;
	u64 khead;			/* frames published: the kernel's own copy, @lock */
	wait_queue_head_t wait;
	struct net *net;		/* the opener's namespace (a reference) */
	int group;			/* -1 when in none; pfq_groups_mutex */
	u32 id;				/* for /proc/net/pfq/groups */
	pid_t pid;			/* of the opener, in the initial pid namespace */
	struct list_head node;		/* in the endpoint list, its own mutex */
	u64 received, delivered, dropped;	/* under @lock */
};

/* A group's configuration: replaced whole (RCU) on every change, never modified. */
struct pfq_group_conf {
	struct rcu_head rcu;
	u32 steer;			/* enum pfq_steer */
	struct bpf_prog *prog;		/* classic BPF, NULL: every frame passes */
	bool owns_prog;			/* @prog goes when this configuration is freed */
	u32 prog_len;			/* its instructions, for /proc */
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

/* pfq_dev.c */
int pfq_dev_init(void);
void pfq_dev_exit(void);
extern struct list_head pfq_dev_list;
extern const char *const pfq_mode_names[PFQ_MODE_MAX];
struct pfq_dev *pfq_dev_lookup(const struct net_device *dev);
struct pfq_dev *pfq_dev_by_name(const char *name);
int pfq_dev_set_mode(struct pfq_dev *pd, enum pfq_mode mode);
void pfq_dev_stats_show(struct seq_file *m);
void pfq_dev_control_show(struct seq_file *m);

/* pfq_ring.c */
struct pfq_ring *pfq_ring_alloc(u32 slots, u32 snaplen);
void pfq_ring_free(struct pfq_ring *ring);
void pfq_ring_free_deferred(struct pfq_ring *ring);
bool pfq_ring_put(struct pfq_ring *ring, const struct sk_buff *skb, int offset);
bool pfq_ring_get(struct pfq_ring *ring, struct pfq_slot *out);
u32 pfq_ring_count(struct pfq_ring *ring);

/* pfq_ring.c, also for endpoints */
int pfq_copy_frame(const struct sk_buff *skb, int offset, u8 *to, u32 caplen);
u32 pfq_frame_len(const struct sk_buff *skb, int offset);

/* pfq_mem.c */
int pfq_mem_init(void);
int pfq_mem_charge(unsigned long pages);
void pfq_mem_uncharge(unsigned long pages);
int pfq_area_alloc(struct pfq_area *area, size_t bytes);
void pfq_area_free(struct pfq_area *area);
void pfq_mem_show(struct seq_file *m);

/* pfq_group.c */
int pfq_groups_init(void);
void pfq_groups_exit(void);
bool pfq_groups_rx(struct pfq_dev *pd, u64 groups, struct sk_buff *skb, int offset);
int pfq_group_join(struct pfq_endpoint *ep, u32 group);
void pfq_group_leave(struct pfq_endpoint *ep);
int pfq_group_bind(struct pfq_endpoint *ep, const struct pfq_bind *bind, bool on);
int pfq_group_steer(struct pfq_endpoint *ep, u32 steer);
int pfq_group_filter(struct pfq_endpoint *ep, const struct pfq_filter *filter);
int pfq_group_vlan(struct pfq_endpoint *ep, const struct pfq_vlan *vlan);
void pfq_groups_show(struct seq_file *m);

/* pfq_endpoint.c */
struct pfq_endpoint *pfq_endpoint_alloc(void);
void pfq_endpoint_free(struct pfq_endpoint *ep);
int pfq_endpoint_ensure_ring(struct pfq_endpoint *ep);
int pfq_endpoint_ring(struct pfq_endpoint *ep, struct pfq_ring_info *info);
bool pfq_endpoint_put(struct pfq_endpoint *ep, struct sk_buff *skb, int offset, u32 snap);
int pfq_endpoint_mmap(struct pfq_endpoint *ep, struct vm_area_struct *vma);
ssize_t pfq_endpoint_read(struct pfq_endpoint *ep, char __user *buf, size_t count,
			  bool nonblock);
__poll_t pfq_endpoint_poll(struct pfq_endpoint *ep, struct file *file, poll_table *wait);
void pfq_endpoint_stats(struct pfq_endpoint *ep, struct pfq_endpoint_stats *stats);
void pfq_endpoints_show(struct seq_file *m);

/* pfq_file.c */
int pfq_file_init(void);
void pfq_file_exit(void);

/* pfq_proc.c */
int pfq_proc_init(void);
void pfq_proc_exit(void);

/* pfq_pcap.c */
int pfq_pcap_init(void);
void pfq_pcap_exit(void);
int pfq_pcap_add(struct pfq_dev *pd);
void pfq_pcap_del(struct pfq_dev *pd);

#endif /* _PFQ_H */
