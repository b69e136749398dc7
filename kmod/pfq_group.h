/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_group.c: groups of endpoints, their steering and filters. */
#ifndef _PFQ_GROUP_H
#define _PFQ_GROUP_H

#include <linux/types.h>

struct pfq_bind;
struct pfq_dev;
struct pfq_endpoint;
struct pfq_filter;
struct pfq_vlan;
struct seq_file;
struct sk_buff;

int pfq_groups_init(void);
void pfq_groups_exit(void);
/* What the groups did with a frame; of several groups' outcomes, the greatest counts. */
enum pfq_groups_rx {
	PFQ_GROUPS_IGNORED,/* no group wanted it: another queue, filtered out */
	PFQ_GROUPS_FULL,	/* a group wanted it, but no endpoint took it: rings full */
	PFQ_GROUPS_TAKEN,	/* an endpoint's ring holds a copy */
};

enum pfq_groups_rx pfq_groups_rx(struct pfq_dev *pd, u64 groups, struct sk_buff *skb,
				 int offset, u64 tstamp_ns);
int pfq_group_join(struct pfq_endpoint *ep, u32 group);
void pfq_group_leave(struct pfq_endpoint *ep);
int pfq_group_bind(struct pfq_endpoint *ep, const struct pfq_bind *bind, bool on);
int pfq_group_steer(struct pfq_endpoint *ep, u32 steer);
int pfq_group_filter(struct pfq_endpoint *ep, const struct pfq_filter *filter);
int pfq_group_vlan(struct pfq_endpoint *ep, const struct pfq_vlan *vlan);
void pfq_groups_show(struct seq_file *m);

#endif /* _PFQ_GROUP_H */
