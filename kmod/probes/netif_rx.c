// SPDX-License-Identifier: GPL-2.0
/*
 * Control probe: netif_rx() exists in every kernel PFQ supports. If this fails to
 * compile, the probe command itself is broken, and the other probes' answers are
 * meaningless; pfq.h then stops the build (PFQ_PROBES_WORK).
 */
#include <linux/netdevice.h>

int pfq_probe(struct sk_buff *skb);

int pfq_probe(struct sk_buff *skb)
{
	int (*fn)(struct sk_buff *skb) = netif_rx;

	return fn(skb);
}
