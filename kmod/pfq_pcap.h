/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_pcap.c: each device's pcap file, /proc/net/pfq/pcap/<device>. */
#ifndef _PFQ_PCAP_H
#define _PFQ_PCAP_H

struct pfq_dev;

int pfq_pcap_init(void);
void pfq_pcap_exit(void);
int pfq_pcap_add(struct pfq_dev *pd);
void pfq_pcap_del(struct pfq_dev *pd);

#endif /* _PFQ_PCAP_H */
