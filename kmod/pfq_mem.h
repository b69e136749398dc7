/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_mem.c: what rings cost, who pays, and the module's cap. */
#ifndef _PFQ_MEM_H
#define _PFQ_MEM_H

#include <linux/types.h>

struct cred;
struct page;
struct seq_file;

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

int pfq_mem_init(void);
int pfq_mem_charge(unsigned long pages);
void pfq_mem_uncharge(unsigned long pages);
int pfq_area_alloc(struct pfq_area *area, size_t bytes);
void pfq_area_free(struct pfq_area *area);
void pfq_mem_show(struct seq_file *m);

#endif /* _PFQ_MEM_H */
