// SPDX-License-Identifier: GPL-2.0
/*
 * PFQ receive core: starts the units in order and stops them in reverse; each unit
 * undoes its own work, and one that fails to start undoes what it did itself. Nothing
 * here is called by another unit.
 *
 * The hooks (pfq_hooks.c) have nothing to start: a driver that uses them can load only
 * once every unit has started, and pfq.ko cannot unload while one is loaded.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>

#include "pfq_params.h"
#include "pfq_mem.h"
#include "pfq_group.h"
#include "pfq_proc.h"
#include "pfq_pcap.h"
#include "pfq_dev.h"
#include "pfq_file.h"

static int __init pfq_init(void)
{
	int err;

	err = pfq_params_init();
	if (err)
		return err;
	err = pfq_mem_init();
	if (err)
		return err;
	err = pfq_groups_init();
	if (err)
		return err;
	err = pfq_proc_init();
	if (err)
		goto groups;
	err = pfq_pcap_init();
	if (err)
		goto proc;
	err = pfq_dev_init();
	if (err)
		goto pcap;
	err = pfq_file_init();
	if (err)
		goto dev;
	pr_info("loaded: ring_slots=%u snaplen=%u\n", pfq_ring_slots, pfq_snaplen);
	return 0;
dev:
	pfq_dev_exit();
pcap:
	pfq_pcap_exit();
proc:
	pfq_proc_exit();
groups:
	pfq_groups_exit();
	return err;
}

static void __exit pfq_exit(void)
{
	/* No endpoint is open (each holds a reference on the module): no group is in use. */
	pfq_file_exit();
	pfq_dev_exit();
	pfq_pcap_exit();
	pfq_proc_exit();
	pfq_groups_exit();
	pr_info("unloaded\n");
}

module_init(pfq_init);
module_exit(pfq_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("PFQ receive core: hooks for accelerated NIC drivers, counters and capture rings");
MODULE_AUTHOR("pfq-omatic");
