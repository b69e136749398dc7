// SPDX-License-Identifier: GPL-2.0
/*
 * The module parameters the rings share (read-only once loaded): the size of a device's
 * ring and the defaults of an endpoint's. ring_memory_max, the cap on all rings, lives
 * with the memory it caps (pfq_mem.c).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/errno.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>

#include "pfq_params.h"

unsigned int pfq_ring_slots = 1024;
module_param_named(ring_slots, pfq_ring_slots, uint, 0444);
MODULE_PARM_DESC(ring_slots, "Frames each tap/capture ring holds (1..1048576, default 1024)");

unsigned int pfq_snaplen = 2048;
module_param_named(snaplen, pfq_snaplen, uint, 0444);
MODULE_PARM_DESC(snaplen, "Bytes kept of each captured frame (64..65535, default 2048)");

/* Refuse to load with values out of range, before any unit uses them. */
int pfq_params_init(void)
{
	if (pfq_ring_slots < 1 || pfq_ring_slots > (1U << 20)) {
		pr_err("ring_slots=%u is out of range (1..1048576)\n", pfq_ring_slots);
		return -EINVAL;
	}
	if (pfq_snaplen < 64 || pfq_snaplen > 65535) {
		pr_err("snaplen=%u is out of range (64..65535)\n", pfq_snaplen);
		return -EINVAL;
	}
	return 0;
}
