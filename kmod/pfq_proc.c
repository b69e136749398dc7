// SPDX-License-Identifier: GPL-2.0
/*
 * The user interface, under /proc/net/pfq/ (init_net):
 *   stats         one line per device and hook: key=value counters
 *   control       write "<device> <pass|tap|capture>" (CAP_NET_ADMIN in the initial
 *                 user namespace, as the opener); read: one line per device
 *   pcap/<device> read: a pcap stream (Ethernet, microseconds) that drains the ring
 *   groups        one line per group that has endpoints, then one per endpoint (root
 *                 only: it names the endpoints' processes)
 *   memory        what every ring holds, and the module's cap (pfq_mem.c)
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/ctype.h>
#include <linux/if_ether.h>
#include <linux/proc_fs.h>
#include <linux/rtnetlink.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <net/net_namespace.h>

#include "pfq.h"
#include "pfq_params.h"

static struct proc_dir_entry *pfq_proc_dir;
static struct proc_dir_entry *pfq_pcap_dir;

/* libpcap's file header and record header, in host byte order as the format allows. */
struct pfq_pcap_hdr {
	u32 magic;		/* 0xa1b2c3d4: microsecond timestamps */
	u16 version_major;	/* 2 */
	u16 version_minor;	/* 4 */
	s32 thiszone;
	u32 sigfigs;
	u32 snaplen;
	u32 linktype;		/* 1: Ethernet */
};

struct pfq_pcap_rec {
	u32 ts_sec;
	u32 ts_usec;
	u32 incl_len;
	u32 orig_len;
};

#define PFQ_PCAP_MAGIC		0xa1b2c3d4
#define PFQ_LINKTYPE_ETHERNET	1

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

static int pfq_stats_show(struct seq_file *m, void *v)
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
	return 0;
}

static int pfq_groups_file_show(struct seq_file *m, void *v)
{
	pfq_groups_show(m);
	pfq_endpoints_show(m);
	return 0;
}

static int pfq_memory_show(struct seq_file *m, void *v)
{
	pfq_mem_show(m);
	return 0;
}

static int pfq_control_show(struct seq_file *m, void *v)
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
	return 0;
}

static int pfq_control_open(struct inode *inode, struct file *file)
{
	return single_open(file, pfq_control_show, NULL);
}

/*
 * "<device> <mode>", one command per write; -EINVAL and one warning when it is bad.
 * A blank write (`echo > control`) changes nothing and is not an error. Capture can
 * take a NIC's traffic from the stack: the writer needs CAP_NET_ADMIN in the initial
 * user namespace, judged on who opened the file (file_ns_capable()), not only the
 * file's mode.
 */
static ssize_t pfq_control_write(struct file *file, const char __user *ubuf,
				 size_t count, loff_t *ppos)
{
	char buf[64], *cmd, *name, *mode_name;
	struct pfq_dev *pd;
	int mode, err;

	if (!file_ns_capable(file, &init_user_ns, CAP_NET_ADMIN))
		return -EPERM;
	if (count >= sizeof(buf)) {
		pr_warn_ratelimited("control: command too long (at most %zu bytes)\n", sizeof(buf) - 1);
		return -EINVAL;
	}
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	cmd = strim(buf);
	if (!*cmd)
		return count;	/* a blank line changes nothing */
	name = strsep(&cmd, " \t");
	mode_name = cmd ? skip_spaces(cmd) : NULL;
	if (!*name || !mode_name || !*mode_name || strpbrk(mode_name, " \t")) {
		pr_warn_ratelimited("control: expected \"<device> <pass|tap|capture>\"\n");
		return -EINVAL;
	}
	mode = match_string(pfq_mode_names, PFQ_MODE_MAX, mode_name);
	if (mode < 0) {
		pr_warn_ratelimited("control: unknown mode '%s' (expected pass, tap or capture)\n",
				    mode_name);
		return -EINVAL;
	}
	rtnl_lock();
	pd = pfq_dev_by_name(name);
	err = pd ? pfq_dev_set_mode(pd, mode) : -ENODEV;
	rtnl_unlock();
	if (err == -ENODEV) {
		pr_warn_ratelimited("control: unknown device '%s' (not in init_net)\n", name);
		return -EINVAL;
	}
	return err ?: count;
}

static const struct proc_ops pfq_control_ops = {
	.proc_open = pfq_control_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_write = pfq_control_write,
	.proc_release = single_release,
};

/*
 * An open pcap file: bytes of the header or of one record not yet read. Reads of one
 * file are serialised by @lock: the file position lock does not cover every reader
 * (io_uring's async reads), and pos/len and the buffers are this file's state.
 */
struct pfq_reader {
	struct mutex lock;
	struct pfq_dev *pd;
	bool header_sent;
	size_t pos;		/* next byte of buf to hand out */
	size_t len;		/* bytes in buf */
	struct pfq_slot *slot;	/* a frame just taken from the ring */
	u8 buf[];		/* header or record, snaplen bytes of frame at most */
};

static int pfq_pcap_open(struct inode *inode, struct file *file)
{
	size_t size = sizeof(struct pfq_pcap_rec) + pfq_snaplen;
	struct pfq_reader *r;

	r = kvzalloc(struct_size(r, buf, size), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	r->slot = kvmalloc(struct_size(r->slot, data, pfq_snaplen), GFP_KERNEL);
	if (!r->slot) {
		kvfree(r);
		return -ENOMEM;
	}
	mutex_init(&r->lock);
	r->pd = pde_data(inode);
	file->private_data = r;
	return nonseekable_open(inode, file);
}

static int pfq_pcap_release(struct inode *inode, struct file *file)
{
	struct pfq_reader *r = file->private_data;

	kvfree(r->slot);
	kvfree(r);
	return 0;
}

static void pfq_pcap_header(struct pfq_reader *r)
{
	struct pfq_pcap_hdr hdr = {
		.magic = PFQ_PCAP_MAGIC,
		.version_major = 2,
		.version_minor = 4,
		.snaplen = pfq_snaplen,
		.linktype = PFQ_LINKTYPE_ETHERNET,
	};

	memcpy(r->buf, &hdr, sizeof(hdr));
	r->len = sizeof(hdr);
	r->pos = 0;
	r->header_sent = true;
}

/* Take the oldest frame of the device's ring into r->buf; false when there is none. */
static bool pfq_pcap_next(struct pfq_reader *r)
{
	struct pfq_slot *slot = r->slot;
	struct pfq_pcap_rec rec;
	struct pfq_ring *ring;
	struct timespec64 ts;
	bool got = false;

	rcu_read_lock();
	ring = rcu_dereference(r->pd->ring);
	if (ring)
		got = pfq_ring_get(ring, slot);
	rcu_read_unlock();
	if (!got)
		return false;
	ts = ktime_to_timespec64(slot->tstamp);
	rec.ts_sec = (u32)ts.tv_sec;
	rec.ts_usec = ts.tv_nsec / NSEC_PER_USEC;
	rec.incl_len = slot->caplen;
	rec.orig_len = slot->len;
	memcpy(r->buf, &rec, sizeof(rec));
	memcpy(r->buf + sizeof(rec), slot->data, slot->caplen);
	r->len = sizeof(rec) + slot->caplen;
	r->pos = 0;
	return true;
}

/*
 * The pcap header first, then every frame in the ring, then end of file: a reader
 * gets what was captured so far and never blocks. A device in pass mode has no ring,
 * so it reads as a header-only (valid, empty) capture.
 */
static ssize_t pfq_pcap_read(struct file *file, char __user *ubuf, size_t count,
			     loff_t *ppos)
{
	struct pfq_reader *r = file->private_data;
	size_t done = 0, n;
	int err = 0;

	if (mutex_lock_interruptible(&r->lock))
		return -ERESTARTSYS;
	while (done < count) {
		if (r->pos == r->len) {
			if (!r->header_sent)
				pfq_pcap_header(r);
			else if (!pfq_pcap_next(r))
				break;
		}
		n = min(count - done, r->len - r->pos);
		if (copy_to_user(ubuf + done, r->buf + r->pos, n)) {
			err = -EFAULT;
			break;
		}
		r->pos += n;
		done += n;
	}
	mutex_unlock(&r->lock);
	*ppos += done;
	return done ?: err;
}

static const struct proc_ops pfq_pcap_ops = {
	.proc_open = pfq_pcap_open,
	.proc_read = pfq_pcap_read,
	.proc_release = pfq_pcap_release,
};

int pfq_proc_add_dev(struct pfq_dev *pd)
{
	pd->pcap = proc_create_data(pd->dev->name, 0400, pfq_pcap_dir, &pfq_pcap_ops, pd);
	return pd->pcap ? 0 : -ENOMEM;
}

void pfq_proc_del_dev(struct pfq_dev *pd)
{
	proc_remove(pd->pcap);
	pd->pcap = NULL;
}

int pfq_proc_init(void)
{
	pfq_proc_dir = proc_mkdir("pfq", init_net.proc_net);
	if (!pfq_proc_dir)
		return -ENOMEM;
	pfq_pcap_dir = proc_mkdir("pcap", pfq_proc_dir);
	if (!pfq_pcap_dir ||
	    !proc_create_single("stats", 0444, pfq_proc_dir, pfq_stats_show) ||
	    !proc_create_single("groups", 0400, pfq_proc_dir, pfq_groups_file_show) ||
	    !proc_create_single("memory", 0444, pfq_proc_dir, pfq_memory_show) ||
	    !proc_create("control", 0644, pfq_proc_dir, &pfq_control_ops)) {
		proc_remove(pfq_proc_dir);
		return -ENOMEM;
	}
	return 0;
}

void pfq_proc_exit(void)
{
	proc_remove(pfq_proc_dir);
}
