// SPDX-License-Identifier: BSD-3-Clause
/*
 * libpcap/pfq-config.c on its own, for tests/test_pcap.py: the settings of a capture on
 * argv[1] (a pfq: name) with this process's environment, as one line:
 *   group=G steer=S caplen=C     (-1 / 0: none)
 *   error: MESSAGE               (exit 1)
 *   not ours                     (exit 3: not a PFQ name)
 */
#include <stdio.h>

#include "pfq-config.h"

extern char **environ;

int main(int argc, char **argv)
{
	struct pfq_settings settings;
	struct pfq_source src;
	char err[512];
	int ret;

	if (argc != 2) {
		fprintf(stderr, "usage: settings NAME\n");
		return 2;
	}
	ret = pfq_source_parse(argv[1], &src, err, sizeof(err));
	if (ret == 1) {
		printf("not ours\n");
		return 3;
	}
	if (ret || pfq_settings_of(&src, environ, &settings, err, sizeof(err))) {
		printf("error: %s\n", err);
		return 1;
	}
	printf("group=%d steer=%d caplen=%d\n", settings.group, settings.steer, settings.caplen);
	return 0;
}
