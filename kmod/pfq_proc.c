// SPDX-License-Identifier: GPL-2.0
/*
 * The user interface, under /proc/net/pfq/ (init_net). This unit makes the directory
 * and its files; what a file shows comes from the unit that owns the data:
 *   stats         one line per device and hook: key=value counters (pfq_dev.c)
 *   control       write "<device> <pass|tap|capture>" (CAP_NET_ADMIN in the initial
 *                 user namespace, as the opener); read: one line per device (pfq_dev.c)
 *   groups        one line per group that has endpoints, then one per endpoint (root
 *                 only: it names the endpoints' processes) (pfq_group.c, pfq_endpoint.c)
 *   memory        what every ring holds, and the module's cap (pfq_mem.c)
 *   pcap/<device> made by pfq_pcap.c, in the directory made here
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/proc_fs.h>
#include <linux/rtnetlink.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <net/net_namespace.h>

#include "pfq_dev.h"
#include "pfq_endpoint.h"
#include "pfq_group.h"
#include "pfq_mem.h"
#include "pfq_proc.h"

static struct proc_dir_entry *pfq_proc_dir;

static int pfq_stats_show(struct seq_file *m, void *v)
{
	pfq_dev_stats_show(m);
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
	pfq_dev_control_show(m);
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

int pfq_proc_init(void)
{
	pfq_proc_dir = proc_mkdir("pfq", init_net.proc_net);
	if (!pfq_proc_dir)
		return -ENOMEM;
	if (!proc_create_single("stats", 0444, pfq_proc_dir, pfq_stats_show) ||
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
