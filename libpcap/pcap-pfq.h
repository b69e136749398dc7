/* SPDX-License-Identifier: BSD-3-Clause */
/* PFQ's row of libpcap's capture_source_types[] (pcap-pfq.c). */
#ifndef PCAP_PFQ_H
#define PCAP_PFQ_H

pcap_t *pfq_create(const char *device, char *ebuf, int *is_ours);
int pfq_findalldevs(pcap_if_list_t *devlistp, char *err_str);

#endif /* PCAP_PFQ_H */
