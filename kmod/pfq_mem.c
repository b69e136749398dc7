// SPDX-License-Identifier: GPL-2.0
/*
 * Ring memory: what every ring of pfq.ko costs, who pays for it, and the module's cap.
 *
 * A ring pins kernel memory for as long as it lives, so it is paid for three times over:
 *  - its pages are charged to the caller's memory cgroup (GFP_KERNEL_ACCOUNT);
 *  - an endpoint's ring counts against its user's RLIMIT_MEMLOCK, in the same
 *    user_struct.locked_vm that AF_XDP and io_uring charge, unless the caller has
 *    CAP_IPC_LOCK (as they do);
 *  - every ring, an endpoint's or a device's, counts against the module-wide cap
 *    (parameter ring_memory_max, MiB; 0: a quarter of RAM).
 * A request over a limit fails with -ENOBUFS, so a caller can tell a limit from the
 * allocator's -ENOMEM. /proc/net/pfq/memory shows the total and the cap.
 *
 * An endpoint's ring is mapped by its reader: its pages are allocated one by one and
 * mapped with vmap(VM_USERMAP), which remap_vmalloc_range() accepts (kernel/bpf/
 * ringbuf.c does the same), since vmalloc_user() takes no gfp flags to charge them.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/user.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "pfq_mem.h"

static unsigned int pfq_ring_memory_max;
module_param_named(ring_memory_max, pfq_ring_memory_max, uint, 0444);
MODULE_PARM_DESC(ring_memory_max,
		 "MiB all rings may hold together (0, the default: a quarter of RAM)");

static unsigned long pfq_mem_limit;	/* pages */
static atomic_long_t pfq_mem_pages = ATOMIC_LONG_INIT(0);
static atomic_long_t pfq_mem_rings = ATOMIC_LONG_INIT(0);

int pfq_mem_init(void)
{
	pfq_mem_limit = pfq_ring_memory_max ?
		(unsigned long)pfq_ring_memory_max << (20 - PAGE_SHIFT) :
		totalram_pages() / 4;
	return 0;
}

/* Count a ring of @pages against the module's cap: -ENOBUFS when it would pass it. */
int pfq_mem_charge(unsigned long pages)
{
	if (atomic_long_add_return(pages, &pfq_mem_pages) > pfq_mem_limit) {
		atomic_long_sub(pages, &pfq_mem_pages);
		return -ENOBUFS;
	}
	atomic_long_inc(&pfq_mem_rings);
	return 0;
}

/* Any context: device rings are freed from RCU callbacks. */
void pfq_mem_uncharge(unsigned long pages)
{
	atomic_long_sub(pages, &pfq_mem_pages);
	atomic_long_dec(&pfq_mem_rings);
}

/* Count the area against the caller's RLIMIT_MEMLOCK, in its user's locked_vm as
 * io_uring and AF_XDP do; CAP_IPC_LOCK lifts the limit, as there.
 */
static int pfq_memlock_charge(struct pfq_area *area)
{
	const struct cred *cred;
	unsigned long limit, cur, new;
	struct user_struct *user;

	if (capable(CAP_IPC_LOCK))
		return 0;
	cred = get_current_cred();
	user = cred->user;
	limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	cur = atomic_long_read(&user->locked_vm);
	do {
		new = cur + area->npages;
		if (new > limit || new < cur) {
			put_cred(cred);
			return -ENOBUFS;
		}
	} while (!atomic_long_try_cmpxchg(&user->locked_vm, &cur, new));
	area->cred = cred;
	return 0;
}

static void pfq_memlock_uncharge(struct pfq_area *area)
{
	if (!area->cred)
		return;
	atomic_long_sub(area->npages, &area->cred->user->locked_vm);
	put_cred(area->cred);
	area->cred = NULL;
}

static void pfq_area_free_pages(struct pfq_area *area, unsigned long n)
{
	while (n--)
		__free_page(area->pages[n]);
	kvfree(area->pages);
	area->pages = NULL;
}

/*
 * Zeroed, user-mappable memory of @bytes (rounded up to pages), charged to the caller
 * as the file comment says. Process context; returns 0, -ENOBUFS or -ENOMEM.
 */
int pfq_area_alloc(struct pfq_area *area, size_t bytes)
{
	/* Fail rather than wake the OOM killer: the size is the user's choice. */
	const gfp_t gfp = GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN | __GFP_RETRY_MAYFAIL;
	unsigned long i;
	int err;

	memset(area, 0, sizeof(*area));
	area->npages = PAGE_ALIGN(bytes) >> PAGE_SHIFT;
	err = pfq_mem_charge(area->npages);
	if (err)
		return err;
	err = pfq_memlock_charge(area);
	if (err)
		goto cap;
	err = -ENOMEM;
	area->pages = kvmalloc_array(area->npages, sizeof(*area->pages), gfp);
	if (!area->pages)
		goto memlock;
	for (i = 0; i < area->npages; i++) {
		area->pages[i] = alloc_page(gfp);
		if (!area->pages[i])
			goto pages;
		cond_resched();
	}
	area->addr = vmap(area->pages, area->npages, VM_MAP | VM_USERMAP, PAGE_KERNEL);
	if (!area->addr)
		goto pages;
	return 0;
pages:
	pfq_area_free_pages(area, i);
memlock:
	pfq_memlock_uncharge(area);
cap:
	pfq_mem_uncharge(area->npages);
	return err;
}

/* Process context (vunmap() may sleep); nothing may use or map the area any more. */
void pfq_area_free(struct pfq_area *area)
{
	if (!area->addr)
		return;
	vunmap(area->addr);
	area->addr = NULL;
	pfq_area_free_pages(area, area->npages);
	pfq_memlock_uncharge(area);
	pfq_mem_uncharge(area->npages);
}

/* /proc/net/pfq/memory: one line, what the rings hold and what they may. */
void pfq_mem_show(struct seq_file *m)
{
	seq_printf(m, "rings=%ld bytes=%llu limit=%llu\n", atomic_long_read(&pfq_mem_rings),
		   (u64)atomic_long_read(&pfq_mem_pages) << PAGE_SHIFT,
		   (u64)pfq_mem_limit << PAGE_SHIFT);
}
