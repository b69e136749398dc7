// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/pfq: every open file is an endpoint (include/pfq/uapi.h has the interface). This
 * unit is the file: it makes and frees the endpoint (pfq_endpoint.c) and turns each
 * request into a call to the endpoint or to its group (pfq_group.c).
 *
 * Opening needs CAP_NET_RAW in the initial user namespace (capable(), not the
 * opener's namespace: a user namespace can mint that, and pfq.ko serves only the
 * initial network namespace's devices); closing leaves the group first and waits,
 * with no lock held, for the hooks that could still see the endpoint, so no frame is
 * ever delivered to a closed one.
 */
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "pfq_endpoint.h"
#include "pfq_file.h"
#include "pfq_group.h"

static int pfq_open(struct inode *inode, struct file *file)
{
	struct pfq_endpoint *ep;

	/* misc_open() holds misc_mtx: nothing here waits on anything but a short list lock. */
	if (!capable(CAP_NET_RAW))
		return -EPERM;
	ep = pfq_endpoint_alloc();
	if (!ep)
		return -ENOMEM;
	file->private_data = ep;
	return nonseekable_open(inode, file);
}

static int pfq_release(struct inode *inode, struct file *file)
{
	struct pfq_endpoint *ep = file->private_data;

	pfq_group_leave(ep);
	pfq_endpoint_free(ep);
	return 0;
}

static int pfq_mmap(struct file *file, struct vm_area_struct *vma)
{
	return pfq_endpoint_mmap(file->private_data, vma);
}

static ssize_t pfq_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	return pfq_endpoint_read(file->private_data, buf, count, file->f_flags & O_NONBLOCK);
}

static __poll_t pfq_poll(struct file *file, poll_table *wait)
{
	return pfq_endpoint_poll(file->private_data, file, wait);
}

/* The argument of an ioctl that passes one in, copied in whole. */
static int pfq_ioctl_in(void *to, const void __user *from, unsigned int cmd)
{
	return copy_from_user(to, from, _IOC_SIZE(cmd)) ? -EFAULT : 0;
}

static long pfq_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct pfq_endpoint *ep = file->private_data;
	void __user *uarg = (void __user *)arg;
	struct pfq_endpoint_stats stats = {};
	struct pfq_filter filter;
	struct pfq_ring_info ring;
	struct pfq_bind bind;
	struct pfq_vlan *vlan;
	u32 value;
	int err;

	switch (cmd) {
	case PFQ_IOC_RING:
		err = pfq_ioctl_in(&ring, uarg, cmd) ?: pfq_endpoint_ring(ep, &ring);
		if (!err && copy_to_user(uarg, &ring, sizeof(ring)))
			err = -EFAULT;
		return err;
	case PFQ_IOC_JOIN:
		err = pfq_ioctl_in(&value, uarg, cmd);
		/* A member needs its ring; a refused group id makes none. */
		if (!err && (value < PFQ_GROUPS || value == PFQ_GROUP_ANY))
			err = pfq_endpoint_ensure_ring(ep);
		return err ?: pfq_group_join(ep, value);
	case PFQ_IOC_LEAVE:
		pfq_group_leave(ep);
		return 0;
	case PFQ_IOC_BIND:
	case PFQ_IOC_UNBIND:
		return pfq_ioctl_in(&bind, uarg, cmd) ?:
			pfq_group_bind(ep, &bind, cmd == PFQ_IOC_BIND);
	case PFQ_IOC_STEER:
		return pfq_ioctl_in(&value, uarg, cmd) ?: pfq_group_steer(ep, value);
	case PFQ_IOC_FILTER:
		return pfq_ioctl_in(&filter, uarg, cmd) ?: pfq_group_filter(ep, &filter);
	case PFQ_IOC_VLAN:
		vlan = memdup_user(uarg, sizeof(*vlan));
		if (IS_ERR(vlan))
			return PTR_ERR(vlan);
		err = pfq_group_vlan(ep, vlan);
		kfree(vlan);
		return err;
	case PFQ_IOC_STATS:
		pfq_endpoint_stats(ep, &stats);
		return copy_to_user(uarg, &stats, sizeof(stats)) ? -EFAULT : 0;
	}
	/* As every driver answers an ioctl it does not know: silently. */
	return -ENOTTY;
}

static const struct file_operations pfq_fops = {
	.owner = THIS_MODULE,
	.open = pfq_open,
	.release = pfq_release,
	.mmap = pfq_mmap,
	.read = pfq_read,
	.poll = pfq_poll,
	.unlocked_ioctl = pfq_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* World-usable node: who may capture is decided by CAP_NET_RAW at open, not by mode. */
static struct miscdevice pfq_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "pfq",
	.fops = &pfq_fops,
	.mode = 0666,
};

int pfq_file_init(void)
{
	return misc_register(&pfq_misc);
}

void pfq_file_exit(void)
{
	misc_deregister(&pfq_misc);
}
