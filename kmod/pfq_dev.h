/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_dev.c: the device table, each device's mode and counters. */
#ifndef _PFQ_DEV_H
#define _PFQ_DEV_H

#include <linux/list.h>

#include "pfq.h"

struct net_device;
struct seq_file;

int pfq_dev_init(void);
void pfq_dev_exit(void);
extern struct list_head pfq_dev_list;	/* every struct pfq_dev, by node; RTNL */
extern const char *const pfq_mode_names[PFQ_MODE_MAX];
struct pfq_dev *pfq_dev_lookup(const struct net_device *dev);
struct pfq_dev *pfq_dev_by_name(const char *name);
int pfq_dev_set_mode(struct pfq_dev *pd, enum pfq_mode mode);
void pfq_dev_stats_show(struct seq_file *m);
void pfq_dev_control_show(struct seq_file *m);

#endif /* _PFQ_DEV_H */
