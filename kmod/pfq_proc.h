/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_proc.c: /proc/net/pfq and its files. */
#ifndef _PFQ_PROC_H
#define _PFQ_PROC_H

int pfq_proc_init(void);
void pfq_proc_exit(void);

#endif /* _PFQ_PROC_H */
