// The peer for bench/rewrite.py: Coccinelle rewriting the three most common receive
// entry points into PFQ hooks, as an engineer would write it by hand.

@@
expression SKB;
@@
- netif_rx(SKB)
+ pfq_netif_rx(SKB)

@@
expression SKB;
@@
- netif_receive_skb(SKB)
+ pfq_netif_receive_skb(SKB)

@@
expression NAPI, SKB;
@@
- napi_gro_receive(NAPI, SKB)
+ pfq_gro_receive(NAPI, SKB)
