/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * PFQ's capture source for libpcap: device names and the fan-out configuration.
 *
 * A name is pfq[/CONFIG]:DEV[^DEV...]. The configuration is the TMA 2017 paper's
 * (Bonelli, Giordano, Procissi, "Enabling packet fan-out in the libpcap library for
 * parallel traffic processing", Table I): a file of `key[@group] = value` lines (keys
 * def_group, fanout[@group], caplen, group_<dev>; `#` starts a comment), then the
 * environment over it (PCAP_GROUP, PCAP_FANOUT, PCAP_CAPLEN, PCAP_GROUP_<dev>). It is
 * the grammar omatic/pfq/config.py reads for `pfq-omatic capture`, with the same rules
 * and the same results (tests/test_pcap.py compares the two).
 *
 * No libpcap internals here: the file builds alone, for that comparison.
 */
#ifndef PFQ_CONFIG_H
#define PFQ_CONFIG_H

#include <stddef.h>

#include <pfq/uapi.h>

#define PFQ_SOURCE_DEVICES	8	/* devices one name may list */
#define PFQ_IFNAMSIZ		16
#define PFQ_CONFIG_DEFAULT	"/etc/pcap.conf"	/* read when it exists */

struct pfq_source {
	char config[4096];		/* CONFIG of pfq/CONFIG:..., "" when none */
	int devices;
	char device[PFQ_SOURCE_DEVICES][PFQ_IFNAMSIZ];
};

struct pfq_config {
	char source[4096];		/* the file read, for messages */
	int def_group;			/* -1: none */
	int fanout_all;			/* enum pfq_steer of a plain `fanout`; -1: none */
	int fanout[PFQ_GROUPS];		/* of fanout@group; -1: none */
	int caplen;			/* 0: none */
	int named;			/* entries of @group_dev */
	struct {
		char dev[PFQ_IFNAMSIZ];
		int group;
	} group_dev[64];
};

/* What a capture on a source gets: its group (-1: one of its own), steering (-1: the
 * group's as it is) and caplen (0: the snapshot length's). */
struct pfq_settings {
	int group;
	int steer;
	int caplen;
};

/* 1 when @name is not a PFQ name; 0 with @src filled; -1 with a message in @err. */
int pfq_source_parse(const char *name, struct pfq_source *src, char *err, size_t errlen);

/* The steering mode a fan-out name stands for (hash, sym, rr, lb, cpu, queue, qm, rnd,
 * random, copy; any case), or -1. */
int pfq_steer_of(const char *name);

void pfq_config_init(struct pfq_config *cfg);
/* Read @text, the contents of @path (for messages), into @cfg: 0, or -1 and @err. */
int pfq_config_parse(struct pfq_config *cfg, const char *text, const char *path, char *err,
		     size_t errlen);
/* Read the file @path; a missing file is an error only when @required. */
int pfq_config_load(struct pfq_config *cfg, const char *path, int required, char *err,
		    size_t errlen);
/* Apply the PCAP_* variables of @env (NULL-terminated NAME=VALUE strings). */
int pfq_config_env(struct pfq_config *cfg, char *const *env, char *err, size_t errlen);
/* The settings of a capture on @src. */
int pfq_config_resolve(const struct pfq_config *cfg, const struct pfq_source *src,
		       struct pfq_settings *out, char *err, size_t errlen);

/* Everything above for a source: its file (or $PCAP_CONFIG, or PFQ_CONFIG_DEFAULT when it
 * exists), then @env over it. */
int pfq_settings_of(const struct pfq_source *src, char *const *env, struct pfq_settings *out,
		    char *err, size_t errlen);

#endif /* PFQ_CONFIG_H */
