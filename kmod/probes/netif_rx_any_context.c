// SPDX-License-Identifier: GPL-2.0
/*
 * Probe: does this kernel have int netif_rx_any_context(struct sk_buff *)? Added in 5.10
 * ("net: Add netif_rx_any_context()"), removed in 5.18 with
 * netif_rx_ni() (commit 2655926aea9b) when netif_rx() became usable from any context.
 */
#include <linux/netdevice.h>

int pfq_probe(struct sk_buff *skb);

int pfq_probe(struct sk_buff *skb)
{
	int (*fn)(struct sk_buff *skb) = netif_rx_any_context;

	return fn(skb);
}
