/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_params.c: the module parameters the rings share. */
#ifndef _PFQ_PARAMS_H
#define _PFQ_PARAMS_H

extern unsigned int pfq_ring_slots;	/* frames per device ring; endpoints' default */
extern unsigned int pfq_snaplen;	/* bytes kept per frame; endpoints' default caplen */

int pfq_params_init(void);

#endif /* _PFQ_PARAMS_H */
