/* SPDX-License-Identifier: GPL-2.0 */
/*
 * PFQ receive hooks: what a PFQ-accelerated driver calls instead of the kernel's
 * receive entry points. pfq-omatic rewrites each call site of an entry point into a
 * call of its hook and includes this header after the driver's own includes.
 *
 * Each hook has the exact prototype of the function it stands for, and in "pass"
 * mode (the default) hands the packet to that function unchanged, so a rewritten
 * driver with no PFQ user behaves like the vanilla one. See kmod/README.md for the
 * tap and capture modes and for what each hook returns when PFQ keeps a packet.
 *
 * The header is self-contained. Kernels differ in which entry points exist:
 * netif_rx_ni() and netif_rx_any_context() are gone since 5.18 ("net: Remove
 * netif_rx_any_context() and netif_rx_ni()."). pfq.ko exports their hooks only where a
 * build-time probe finds them (kmod/probes/); declaring them everywhere is harmless
 * because the rewriter only emits calls to them on kernels that have the callee, and
 * their prototypes use only types every kernel has.
 */
#ifndef _PFQ_HOOKS_H
#define _PFQ_HOOKS_H

#include <linux/list.h>
#include <linux/netdevice.h>
#include <linux/skbuff.h>

/* netif_receive_skb(): NAPI receive without GRO. */
int pfq_netif_receive_skb(struct sk_buff *skb);

/* netif_receive_skb_list(): batched receive of a list of skbs. */
void pfq_netif_receive_skb_list(struct list_head *head);

/* napi_gro_receive(): GRO receive of a built skb. */
gro_result_t pfq_gro_receive(struct napi_struct *napi, struct sk_buff *skb);

/* napi_gro_frags(): GRO receive of napi->skb, filled by napi_get_frags() + frags. */
gro_result_t pfq_gro_frags(struct napi_struct *napi);

/* netif_rx(): non-NAPI receive (any context since 5.18). */
int pfq_netif_rx(struct sk_buff *skb);

/* netif_rx_ni(): netif_rx() from process context; exported only where it exists. */
int pfq_netif_rx_ni(struct sk_buff *skb);

/* netif_rx_any_context(): netif_rx() from any context, 5.10 to 5.17; exported only
 * where it exists. */
int pfq_netif_rx_any_context(struct sk_buff *skb);

#endif /* _PFQ_HOOKS_H */
