// SPDX-License-Identifier: GPL-2.0
/*
 * A device's pcap file, /proc/net/pfq/pcap/<device>: reading it drains the device's
 * ring as a pcap stream (link type Ethernet, microsecond timestamps, host byte order),
 * then ends; a device in pass mode has no ring and reads as an empty capture. The
 * device table (pfq_dev.c) makes and removes the file as devices come, go and are
 * renamed, under RTNL; the file finds the ring under RCU, as the hooks do.
 *
 * The hooks copy frames to the ring only while the file is open: one copy per frame
 * for someone who reads it, none for frames no one will. pfq_dev.pcap_readers counts
 * the open files; the first one empties the ring, so a reader gets the frames that
 * came while the file was open, not what an earlier reader left. Removing the file
 * (proc_remove()) releases every open one, so the count goes back to 0 with it.
 */
#include <linux/mutex.h>
#include <linux/netdevice.h>
#include <linux/proc_fs.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <net/net_namespace.h>

#include "pfq.h"
#include "pfq_params.h"
#include "pfq_pcap.h"
#include "pfq_ring.h"

static struct proc_dir_entry *pfq_pcap_dir;

/*
 * Serialises opens and releases of pcap files around each device's count of readers,
 * so that "the first reader" is well defined: one that finds no other file open.
 */
static DEFINE_MUTEX(pfq_pcap_readers_lock);

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

/*
 * A reader more for @pd: from now on the hooks fill its ring. The first one empties it
 * first, of frames an earlier reader left unread (or a hook put in as it left).
 */
static void pfq_pcap_reader_add(struct pfq_dev *pd)
{
	struct pfq_ring *ring;

	mutex_lock(&pfq_pcap_readers_lock);
	if (!atomic_read(&pd->pcap_readers)) {
		rcu_read_lock();
		ring = rcu_dereference(pd->ring);
		if (ring)
			pfq_ring_clear(ring);
		rcu_read_unlock();
	}
	atomic_inc(&pd->pcap_readers);
	mutex_unlock(&pfq_pcap_readers_lock);
}

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
	pfq_pcap_reader_add(r->pd);
	return nonseekable_open(inode, file);
}

static int pfq_pcap_release(struct inode *inode, struct file *file)
{
	struct pfq_reader *r = file->private_data;

	mutex_lock(&pfq_pcap_readers_lock);
	atomic_dec(&r->pd->pcap_readers);
	mutex_unlock(&pfq_pcap_readers_lock);
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
 * The pcap header first, then every frame in the ring, then end of file; never blocks.
 * A reader gets the frames that came since the file was opened (by it, or by a reader
 * still open then) that no reader took yet. A device in pass mode has no ring, so it
 * reads as a header-only (valid, empty) capture.
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

/* /proc/net/pfq/pcap/<name> for @pd; the caller holds RTNL (names change under it). */
int pfq_pcap_add(struct pfq_dev *pd)
{
	pd->pcap = proc_create_data(pd->dev->name, 0400, pfq_pcap_dir, &pfq_pcap_ops, pd);
	return pd->pcap ? 0 : -ENOMEM;
}

/*
 * Waits for the file's readers to leave and releases its open files, so the device has
 * no reader after; new ones get -EIO.
 */
void pfq_pcap_del(struct pfq_dev *pd)
{
	proc_remove(pd->pcap);
	pd->pcap = NULL;
}

/* In /proc/net/pfq, which pfq_proc.c makes first. */
int pfq_pcap_init(void)
{
	pfq_pcap_dir = proc_mkdir("pfq/pcap", init_net.proc_net);
	return pfq_pcap_dir ? 0 : -ENOMEM;
}

/* After every device's file is gone (pfq_dev_exit()). */
void pfq_pcap_exit(void)
{
	proc_remove(pfq_pcap_dir);
}
