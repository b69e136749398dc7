// SPDX-License-Identifier: GPL-2.0
/*
 * Probe: does this kernel have int netif_rx_ni(struct sk_buff *)? Removed in 5.18
 * ("net: Remove netif_rx_any_context() and netif_rx_ni()."); distributions may backport either way, so we ask the headers.
 */
#include <linux/netdevice.h>

int pfq_probe(struct sk_buff *skb);

int pfq_probe(struct sk_buff *skb)
{
	int (*fn)(struct sk_buff *skb) = netif_rx_ni;

	return fn(skb);
}
