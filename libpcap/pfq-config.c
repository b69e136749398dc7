// SPDX-License-Identifier: BSD-3-Clause
/*
 * PFQ's capture source for libpcap: device names and the fan-out configuration
 * (pfq-config.h says what, omatic/pfq/config.py is the same grammar in Python).
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pfq-config.h"

static const struct {
	const char *name;
	int steer;
} pfq_steer_names[] = {
	{ "copy", PFQ_STEER_COPY }, { "rr", PFQ_STEER_RR }, { "hash", PFQ_STEER_HASH },
	{ "cpu", PFQ_STEER_CPU }, { "queue", PFQ_STEER_QUEUE }, { "rnd", PFQ_STEER_RND },
	/* PACKET_FANOUT's names (LB is round robin, QM the recorded queue), and sym */
	{ "lb", PFQ_STEER_RR }, { "qm", PFQ_STEER_QUEUE }, { "random", PFQ_STEER_RND },
	{ "sym", PFQ_STEER_HASH },
};

#define STEER_LIST "copy, rr, hash, cpu, queue, rnd, lb, qm, random, sym"

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* A device name as the kernel takes one: 1..15 bytes, no '/', no blank or control. */
static int pfq_ifname_ok(const char *name, size_t len)
{
	size_t i;

	if (len == 0 || len >= PFQ_IFNAMSIZ)
		return 0;
	for (i = 0; i < len; i++)
		if ((unsigned char)name[i] <= 32 || name[i] == '/')
			return 0;
	return 1;
}

int pfq_source_parse(const char *name, struct pfq_source *src, char *err, size_t errlen)
{
	const char *devs, *p;

	memset(src, 0, sizeof(*src));
	if (strncmp(name, "pfq:", 4) == 0) {
		devs = name + 4;
	} else if (strncmp(name, "pfq/", 4) == 0) {
		devs = strchr(name + 4, ':');
		if (!devs || devs == name + 4)
			return fail(err, errlen, "%s: expected pfq/CONFIG:DEVICE (a configuration "
				    "file, then a colon and devices)", name);
		if ((size_t)(devs - (name + 4)) >= sizeof(src->config))
			return fail(err, errlen, "%s: the configuration's path is too long", name);
		memcpy(src->config, name + 4, devs - (name + 4));
		devs++;
	} else {
		return 1;
	}
	for (p = devs;; p++) {
		const char *end = strchr(p, '^');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		if (!pfq_ifname_ok(p, len))
			return fail(err, errlen, "%s: '%.*s' is not a network device name (1..15 "
				    "characters, no '/' or blanks; devices are joined by '^')",
				    name, (int)len, p);
		if (src->devices == PFQ_SOURCE_DEVICES)
			return fail(err, errlen, "%s: at most %d devices", name, PFQ_SOURCE_DEVICES);
		memcpy(src->device[src->devices++], p, len);
		if (!end)
			break;
		p = end;
	}
	return 0;
}

int pfq_steer_of(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(pfq_steer_names) / sizeof(pfq_steer_names[0]); i++)
		if (strcasecmp(name, pfq_steer_names[i].name) == 0)
			return pfq_steer_names[i].steer;
	return -1;
}

void pfq_config_init(struct pfq_config *cfg)
{
	int g;

	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->source, sizeof(cfg->source), "the configuration");
	cfg->def_group = -1;
	cfg->fanout_all = -1;
	for (g = 0; g < PFQ_GROUPS; g++)
		cfg->fanout[g] = -1;
}

/* @text, stripped of blanks at both ends, as an integer low..high: decimal or 0x hex. */
static int pfq_int(const char *text, int low, int high, const char *what, const char *where,
		   int *out, char *err, size_t errlen)
{
	char buf[64], *end;
	long value = (long)low - 1;
	size_t len;

	while (isspace((unsigned char)*text))
		text++;
	len = strlen(text);
	while (len && isspace((unsigned char)text[len - 1]))
		len--;
	if (len && len < sizeof(buf)) {
		memcpy(buf, text, len);
		buf[len] = '\0';
		if (buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X')) {
			if (isxdigit((unsigned char)buf[2])) {
				errno = 0;
				value = strtol(buf + 2, &end, 16);
				if (*end || errno)
					value = (long)low - 1;
			}
		} else if (isdigit((unsigned char)buf[0]) && (buf[0] != '0' || len == 1)) {
			errno = 0;
			value = strtol(buf, &end, 10);
			if (*end || errno)
				value = (long)low - 1;
		}
	}
	if (value < low || value > high)
		return fail(err, errlen, "%s: %s '%.*s': expected %d..%d", where, what,
			    (int)(len < 64 ? len : 64), text, low, high);
	*out = (int)value;
	return 0;
}

static int pfq_steer_at(const char *text, const char *where, int *out, char *err,
			size_t errlen)
{
	*out = pfq_steer_of(text);
	if (*out < 0)
		return fail(err, errlen, "%s: unknown steering mode '%s' (expected one of %s)",
			    where, text, STEER_LIST);
	return 0;
}

/* The group of a device named in the configuration or environment: set or replace it. */
static int pfq_name_group(struct pfq_config *cfg, const char *dev, size_t len, int group,
			  const char *where, char *err, size_t errlen)
{
	int i;

	if (!pfq_ifname_ok(dev, len))
		return fail(err, errlen, "%s: '%.*s': not a network device name (1..15 characters, "
			    "no '/' or blanks)", where, (int)len, dev);
	for (i = 0; i < cfg->named; i++)
		if (strlen(cfg->group_dev[i].dev) == len && !memcmp(cfg->group_dev[i].dev, dev, len))
			break;
	if (i == (int)(sizeof(cfg->group_dev) / sizeof(cfg->group_dev[0])))
		return fail(err, errlen, "%s: too many group_<dev> keys", where);
	if (i == cfg->named) {
		memset(cfg->group_dev[i].dev, 0, PFQ_IFNAMSIZ);
		memcpy(cfg->group_dev[i].dev, dev, len);
		cfg->named++;
	}
	cfg->group_dev[i].group = group;
	return 0;
}

static char *pfq_trim(char *s)
{
	size_t len;

	while (isspace((unsigned char)*s))
		s++;
	len = strlen(s);
	while (len && isspace((unsigned char)s[len - 1]))
		s[--len] = '\0';
	return s;
}

static int pfq_config_line(struct pfq_config *cfg, char *line, const char *where, char *err,
			   size_t errlen)
{
	char *eq, *key, *value, *name, *at = NULL, *p;
	int group = -1, n;

	if (line[0] == '>')
		return fail(err, errlen, "%s: pfq-lang literals ('>' lines) are not supported: "
			    "fanout takes a steering mode", where);
	eq = strchr(line, '=');
	if (!eq)
		goto syntax;
	*eq = '\0';
	key = pfq_trim(line);
	value = pfq_trim(eq + 1);
	/* name, then optionally blanks, '@', blanks and one word */
	name = key;
	for (p = key; *p && *p != '@' && !isspace((unsigned char)*p); p++)
		;
	if (p == name)
		goto syntax_eq;
	if (*p) {
		char *q = p;

		while (isspace((unsigned char)*q))
			q++;
		if (*q != '@')
			goto syntax_eq;
		*p = '\0';
		q++;
		while (isspace((unsigned char)*q))
			q++;
		at = q;
		while (*q && !isspace((unsigned char)*q))
			q++;
		if (q == at || *q)
			goto syntax_eq;
	}
	if (!*value)
		goto syntax_eq;
	if (at && pfq_int(at, 0, PFQ_GROUPS - 1, "group", where, &group, err, errlen))
		return -1;
	if (at && strcasecmp(name, "fanout") != 0)
		return fail(err, errlen, "%s: %s takes no @group (only fanout does)", where, name);
	if (strcasecmp(name, "def_group") == 0)
		return pfq_int(value, 0, PFQ_GROUPS - 1, "group", where, &cfg->def_group, err,
			       errlen);
	if (strcasecmp(name, "caplen") == 0)
		return pfq_int(value, 64, 65535, "caplen", where, &cfg->caplen, err, errlen);
	if (strcasecmp(name, "fanout") == 0)
		return pfq_steer_at(value, where, at ? &cfg->fanout[group] : &cfg->fanout_all, err,
				    errlen);
	if (strncasecmp(name, "group_", 6) == 0 && strlen(name) > 6) {
		if (pfq_name_group(cfg, name + 6, strlen(name + 6), 0, where, err, errlen) ||
		    pfq_int(value, 0, PFQ_GROUPS - 1, "group", where, &n, err, errlen))
			return -1;
		return pfq_name_group(cfg, name + 6, strlen(name + 6), n, where, err, errlen);
	}
	return fail(err, errlen, "%s: unknown key '%s' (expected def_group, fanout[@group], caplen "
		    "or group_<dev>)", where, name);
syntax_eq:
	*eq = '=';
syntax:
	return fail(err, errlen, "%s: expected 'key[@group] = value', not '%s'", where,
		    pfq_trim(line));
}

int pfq_config_parse(struct pfq_config *cfg, const char *text, const char *path, char *err,
		     size_t errlen)
{
	char line[1024], where[4200];
	const char *p = text;
	int number = 0;

	while (*p) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char *hash, *s;

		number++;
		snprintf(where, sizeof(where), "%s:%d", path, number);
		if (len >= sizeof(line))
			return fail(err, errlen, "%s: a line of %zu bytes (at most %zu)", where, len,
				    sizeof(line) - 1);
		memcpy(line, p, len);
		line[len] = '\0';
		hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		s = pfq_trim(line);
		if (*s && pfq_config_line(cfg, s, where, err, errlen))
			return -1;
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

int pfq_config_load(struct pfq_config *cfg, const char *path, int required, char *err,
		    size_t errlen)
{
	char *text;
	size_t len = 0, cap = 4096;
	FILE *f = fopen(path, "r");
	int ret;

	snprintf(cfg->source, sizeof(cfg->source), "%s", path);
	if (!f) {
		if (!required && errno == ENOENT)
			return 0;
		return fail(err, errlen, "%s: cannot read the PFQ configuration: %s", path,
			    strerror(errno));
	}
	text = malloc(cap);
	while (text) {
		size_t got = fread(text + len, 1, cap - len - 1, f);

		len += got;
		if (len < cap - 1)
			break;
		if (cap >= (1 << 20)) {
			fclose(f);
			free(text);
			return fail(err, errlen, "%s: the PFQ configuration is over 1 MiB", path);
		}
		cap *= 2;
		char *more = realloc(text, cap);

		if (!more)
			free(text);
		text = more;
	}
	if (!text || ferror(f)) {
		int e = text ? EIO : ENOMEM;

		fclose(f);
		free(text);
		return fail(err, errlen, "%s: cannot read the PFQ configuration: %s", path,
			    strerror(e));
	}
	fclose(f);
	text[len] = '\0';
	ret = pfq_config_parse(cfg, text, path, err, errlen);
	free(text);
	return ret;
}

/* The value of @name in @env, or NULL. */
static const char *pfq_env(char *const *env, const char *name)
{
	size_t len = strlen(name);

	for (; env && *env; env++)
		if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
			return *env + len + 1;
	return NULL;
}

int pfq_config_env(struct pfq_config *cfg, char *const *env, char *err, size_t errlen)
{
	static const char prefix[] = "PCAP_GROUP_";
	const char *value;
	int g;

	value = pfq_env(env, "PCAP_GROUP");
	if (value && pfq_int(value, 0, PFQ_GROUPS - 1, "group", "PCAP_GROUP", &cfg->def_group,
			     err, errlen))
		return -1;
	value = pfq_env(env, "PCAP_FANOUT");
	if (value) {
		/* The environment wins over fanout and fanout@group alike. */
		if (pfq_steer_at(value, "PCAP_FANOUT", &cfg->fanout_all, err, errlen))
			return -1;
		for (g = 0; g < PFQ_GROUPS; g++)
			cfg->fanout[g] = -1;
	}
	value = pfq_env(env, "PCAP_CAPLEN");
	if (value && pfq_int(value, 64, 65535, "caplen", "PCAP_CAPLEN", &cfg->caplen, err,
			     errlen))
		return -1;
	for (; env && *env; env++) {
		const char *var = *env, *eq = strchr(var, '=');
		char where[64];
		int n;

		if (!eq || strncmp(var, prefix, sizeof(prefix) - 1) != 0 ||
		    eq - var <= (long)sizeof(prefix) - 1)
			continue;
		snprintf(where, sizeof(where), "%.*s", (int)(eq - var), var);
		if (pfq_name_group(cfg, var + sizeof(prefix) - 1, eq - var - (sizeof(prefix) - 1),
				   0, where, err, errlen) ||
		    pfq_int(eq + 1, 0, PFQ_GROUPS - 1, "group", where, &n, err, errlen) ||
		    pfq_name_group(cfg, var + sizeof(prefix) - 1, eq - var - (sizeof(prefix) - 1),
				   n, where, err, errlen))
			return -1;
	}
	return 0;
}

int pfq_config_resolve(const struct pfq_config *cfg, const struct pfq_source *src,
		       struct pfq_settings *out, char *err, size_t errlen)
{
	unsigned long long groups = 0;
	int d, i, group = -1;

	for (d = 0; d < src->devices; d++)
		for (i = 0; i < cfg->named; i++)
			if (strcmp(cfg->group_dev[i].dev, src->device[d]) == 0) {
				group = cfg->group_dev[i].group;
				groups |= 1ull << group;
			}
	if (groups & (groups - 1)) {
		char names[PFQ_SOURCE_DEVICES * PFQ_IFNAMSIZ], list[PFQ_GROUPS * 4];
		size_t n = 0, m = 0;

		for (d = 0; d < src->devices; d++)
			n += snprintf(names + n, sizeof(names) - n, "%s%s", d ? "^" : "",
				      src->device[d]);
		for (i = 0; i < PFQ_GROUPS; i++)
			if (groups & (1ull << i))
				m += snprintf(list + m, sizeof(list) - m, "%s%d", m ? ", " : "", i);
		return fail(err, errlen, "%s: devices %s are in different groups (%s)", cfg->source,
			    names, list);
	}
	out->group = groups ? group : cfg->def_group;
	out->steer = cfg->fanout_all;
	if (out->group >= 0 && cfg->fanout[out->group] >= 0)
		out->steer = cfg->fanout[out->group];
	out->caplen = cfg->caplen;
	return 0;
}

int pfq_settings_of(const struct pfq_source *src, char *const *env, struct pfq_settings *out,
		    char *err, size_t errlen)
{
	const char *path = src->config[0] ? src->config : pfq_env(env, "PCAP_CONFIG");
	struct pfq_config cfg;

	pfq_config_init(&cfg);
	if (pfq_config_load(&cfg, path ? path : PFQ_CONFIG_DEFAULT, path != NULL, err, errlen) ||
	    pfq_config_env(&cfg, env, err, errlen))
		return -1;
	return pfq_config_resolve(&cfg, src, out, err, errlen);
}
