// SPDX-License-Identifier: BSD-3-Clause
/*
 * PFQ as a libpcap capture source: `pfq:eth0`, `pfq:eth0^eth1`, `pfq/CONFIG:eth0`.
 *
 * Compiled into Debian's libpcap by `pfq-omatic pcap`, which adds this file, pfq-config.c
 * and a row of capture_source_types[] (pfq_findalldevs, pfq_create) to the source
 * package at build time. Each pcap_t is one PFQ endpoint (kmod/include/pfq/uapi.h):
 * /dev/pfq opened, a ring sized from the snapshot length and buffer size, a group
 * joined, the devices bound, the ring mmap'ed. Processes started alike (same group, same
 * fan-out, same filter) share the group's frames; the first member decides its steering
 * and filter, a later one asking for others is refused (PFQ_STEER_SHARED,
 * PFQ_FILTER_SHARED).
 *
 * Reading: frame n is in slot n % slots, published when its seq is n + 1 (load-acquire,
 * then the slot); the reader gives slots back by storing `tail` (store-release), each
 * after its callback returned, every PFQ_RELEASE_BATCH frames and all before the read
 * returns: /dev/pfq is readable while a frame is not given back, so an
 * application that polls before each pcap_dispatch() (softflowd, with no timeout) would
 * otherwise be told of a frame it already had, and block in the read. pcap_next() and
 * pcap_next_ex() get a copy of the frame (as pcap-linux.c gives them), valid until the
 * next call as libpcap promises.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pcap-int.h"
#include "pcap/pfq.h"
#include "pcap-pfq.h"
#include "pfq-config.h"

#define PFQ_DEVICE	"/dev/pfq"
#define PFQ_CONTROL	"/proc/net/pfq/control"
#define PFQ_MAX_SLOTS	1048576
#define PFQ_MIN_SLOTS	64
/* libpcap's usual buffer when none is asked for (as pcap-linux.c's) */
#define PFQ_DEFAULT_BUFFER	(2 * 1024 * 1024)
/* Frames read between two stores of the ring's tail */
#define PFQ_RELEASE_BATCH	32
/* A read with a timeout sleeps until 1/PFQ_WAKE_SHARE of the ring waits */
#define PFQ_WAKE_SHARE		4

struct pcap_pfq {
	struct pfq_source src;
	int group;		/* wanted (-1: one of its own), then the one joined */
	int steer;		/* wanted steering, -1: the group's as it is */
	int caplen;		/* wanted bytes per frame, 0: from the snapshot length */
	int nonblock;
	int kernel_filter;	/* the group's BPF filter is this pcap_t's: no user-space pass */
	int breakfd;		/* eventfd that pcap_breakloop() writes, to end a poll() */
	int promiscfd;		/* packet socket holding the devices' promiscuous mode */
	uint8_t *ring;
	size_t ring_size;
	struct pfq_ring_info info;
	uint64_t next;		/* the next frame to read; frames before it are given back */
	u_char *oneshot;	/* pcap_next()'s copy of a frame */
	uint64_t ifdrop_base;	/* the devices' drop counters at activation */
};

/* -- messages -------------------------------------------------------------------------- */

/* The device as the user named it, for messages. */
static const char *pfq_name(pcap_t *p)
{
	return p->opt.device ? p->opt.device : "pfq";
}

/* "pfq:eth0: WHAT: the error's text" in the pcap_t's error buffer; @status. */
static int pfq_errno(pcap_t *p, int err, int status, const char *what)
{
	snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: %s: %s", pfq_name(p), what, strerror(err));
	return status;
}

/* -- the devices ---------------------------------------------------------------------- */

/* The mode (pass, tap, capture) PFQ has @dev in; "" when PFQ does not track it. */
static void pfq_device_mode(const char *dev, char *mode, size_t len)
{
	char line[512], want[64];
	FILE *f = fopen(PFQ_CONTROL, "r");

	mode[0] = '\0';
	if (!f)
		return;
	snprintf(want, sizeof(want), "dev=%s ", dev);
	while (fgets(line, sizeof(line), f)) {
		char *m = strstr(line, " mode=");

		if (strncmp(line, want, strlen(want)) == 0 && m) {
			m += 6;
			snprintf(mode, len, "%.*s", (int)strcspn(m, " \n"), m);
			break;
		}
	}
	fclose(f);
}

static uint64_t pfq_sysfs_counter(const char *dev, const char *name)
{
	char path[128];
	unsigned long long value = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s", dev, name);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%llu", &value) != 1)
		value = 0;
	fclose(f);
	return value;
}

/* What the devices dropped themselves (as pcap-linux.c counts ps_ifdrop). */
static uint64_t pfq_ifdrops(const struct pfq_source *src)
{
	uint64_t sum = 0;
	int d;

	for (d = 0; d < src->devices; d++)
		sum += pfq_sysfs_counter(src->device[d], "rx_missed_errors") +
		       pfq_sysfs_counter(src->device[d], "rx_fifo_errors");
	return sum;
}

/* The largest MTU of the devices, or 0 when none says. */
static int pfq_mtu(const struct pfq_source *src)
{
	struct ifreq ifr;
	int d, mtu = 0, s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		return 0;
	for (d = 0; d < src->devices; d++) {
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", src->device[d]);
		if (ioctl(s, SIOCGIFMTU, &ifr) == 0 && ifr.ifr_mtu > mtu)
			mtu = ifr.ifr_mtu;
	}
	close(s);
	return mtu;
}

/*
 * Hold the devices in promiscuous mode for as long as the pcap_t lives, as a packet socket
 * does (the kernel counts each holder, and drops the socket's hold when it closes). The
 * socket's protocol is 0: it receives nothing.
 */
static int pfq_promisc(pcap_t *p, struct pcap_pfq *pq)
{
	int d;

	pq->promiscfd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (pq->promiscfd < 0)
		return pfq_errno(p, errno, PCAP_ERROR, "promiscuous mode");
	for (d = 0; d < pq->src.devices; d++) {
		struct packet_mreq mr = {
			.mr_ifindex = (int)if_nametoindex(pq->src.device[d]),
			.mr_type = PACKET_MR_PROMISC,
		};

		if (setsockopt(pq->promiscfd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr))) {
			char what[64];

			snprintf(what, sizeof(what), "promiscuous mode on %s", pq->src.device[d]);
			return pfq_errno(p, errno, PCAP_ERROR, what);
		}
	}
	return 0;
}

/* -- the ring ------------------------------------------------------------------------- */

static struct pfq_frame *pfq_slot(struct pcap_pfq *pq, uint64_t n)
{
	return (struct pfq_frame *)(pq->ring + pq->info.data_offset +
				    (n % pq->info.slots) * pq->info.slot_size);
}

/* Give back every frame before pq->next. */
static void pfq_release(struct pcap_pfq *pq)
{
	struct pfq_ring_head *head = (struct pfq_ring_head *)pq->ring;

	__atomic_store_n(&head->tail, pq->next, __ATOMIC_RELEASE);
}

/*
 * Wait in poll() until /dev/pfq is readable: 1, 0 when @timeout (ms, -1: none) passed,
 * PCAP_ERROR_BREAK or PCAP_ERROR.
 */
static int pfq_poll(pcap_t *p, struct pcap_pfq *pq, int timeout)
{
	struct pollfd fds[2] = {
		{ .fd = p->fd, .events = POLLIN },
		{ .fd = pq->breakfd, .events = POLLIN },
	};
	int ret;

	for (;;) {
		ret = poll(fds, 2, timeout);
		if (p->break_loop) {
			uint64_t value;

			if (pq->breakfd >= 0 && read(pq->breakfd, &value, sizeof(value)) < 0 &&
			    errno != EAGAIN)
				return pfq_errno(p, errno, PCAP_ERROR, "breakloop");
			p->break_loop = 0;
			return PCAP_ERROR_BREAK;
		}
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret < 0)
			return pfq_errno(p, errno, PCAP_ERROR, "poll");
		if (fds[0].revents & (POLLERR | POLLNVAL)) {
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: /dev/pfq reports an error",
				 pfq_name(p));
			return PCAP_ERROR;
		}
		return ret > 0;
	}
}

/*
 * Wait until frames may be there: 1, 0 when the timeout passed, PCAP_ERROR_BREAK or
 * PCAP_ERROR. With a timeout, as many frames as it takes to fill a share of the ring
 * wake the reader (the ring head's wake_after), the timeout brings what is there short
 * of that: a wake-up per batch, not per frame, when frames come faster than they are
 * read, and no later than TPACKET_V3's block timer would deliver them. In immediate mode
 * or with no timeout, the first frame wakes it. wake_after is put back to 0 before
 * returning, so that an application's own poll() on the selectable fd is told of the
 * first frame.
 */
static int pfq_wait(pcap_t *p, struct pcap_pfq *pq)
{
	struct pfq_ring_head *head = (struct pfq_ring_head *)pq->ring;
	int timeout = (p->opt.immediate || p->opt.timeout <= 0) ? -1 : p->opt.timeout;
	uint32_t batch = timeout < 0 ? 1 : pq->info.slots / PFQ_WAKE_SHARE;
	int ret;

	/* Before poll(): the kernel's barrier there orders it against the producers. */
	__atomic_store_n(&head->wake_after, batch, __ATOMIC_RELAXED);
	ret = pfq_poll(p, pq, timeout);
	__atomic_store_n(&head->wake_after, 0, __ATOMIC_RELAXED);
	return ret;
}

static int pfq_read(pcap_t *p, int cnt, pcap_handler callback, u_char *user)
{
	struct pcap_pfq *pq = p->priv;
	int n = 0, seen = 0, max = PACKET_COUNT_IS_UNLIMITED(cnt) ? (int)pq->info.slots : cnt;
	int timed_out = 0;
	struct pcap_pkthdr h;

	while (n < max && seen < (int)pq->info.slots) {
		struct pfq_frame *f = pfq_slot(pq, pq->next);
		const u_char *data = (const u_char *)(f + 1);

		if (p->break_loop) {
			p->break_loop = 0;
			pfq_release(pq);
			return PCAP_ERROR_BREAK;
		}
		if (__atomic_load_n(&f->seq, __ATOMIC_ACQUIRE) != (uint32_t)(pq->next + 1)) {
			int ret;

			if (n > 0 || seen > 0 || pq->nonblock || timed_out)
				break;
			ret = pfq_wait(p, pq);
			if (ret < 0)
				return ret;
			/* Woken, or the timeout passed: read what is there, short of a batch. */
			timed_out = ret == 0;
			continue;
		}
		seen++;
		h.ts.tv_sec = (time_t)(f->tstamp_ns / 1000000000u);
		h.ts.tv_usec = (suseconds_t)(f->tstamp_ns % 1000000000u);
		if (p->opt.tstamp_precision != PCAP_TSTAMP_PRECISION_NANO)
			h.ts.tv_usec /= 1000;
		h.len = f->len;
		h.caplen = f->caplen < (uint32_t)p->snapshot ? f->caplen : (uint32_t)p->snapshot;
		if (!(f->flags & PFQ_FRAME_EMPTY) &&
		    (pq->kernel_filter || !p->fcode.bf_insns ||
		     pcap_filter(p->fcode.bf_insns, data, h.len, h.caplen))) {
			callback(user, &h, data);
			n++;
		}
		pq->next++;
		/* Slots back to the kernel as the read goes, not one store per frame. */
		if (seen % PFQ_RELEASE_BATCH == 0)
			pfq_release(pq);
	}
	pfq_release(pq);
	return n;
}

/* pcap_next()'s callback: the frame is copied, since its slot is given back. */
static void pfq_oneshot(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
	struct oneshot_userdata *sp = (struct oneshot_userdata *)user;
	struct pcap_pfq *pq = sp->pd->priv;

	*sp->hdr = *h;
	memcpy(pq->oneshot, bytes, h->caplen);
	*sp->pkt = pq->oneshot;
}

/* -- ops ------------------------------------------------------------------------------ */

static int pfq_setfilter(pcap_t *p, struct bpf_program *fp)
{
	struct pcap_pfq *pq = p->priv;
	struct pfq_filter filter = {
		.len = fp->bf_len,
		.flags = PFQ_FILTER_SHARED,
		.insns = (uintptr_t)fp->bf_insns,
	};

	/* A copy for the user-space pass, used when the kernel cannot take the program. */
	if (install_bpf_program(p, fp) < 0)
		return PCAP_ERROR;
	if (ioctl(p->fd, PFQ_IOC_FILTER, &filter) == 0) {
		pq->kernel_filter = 1;
		return 0;
	}
	if (errno == EBUSY) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: group %d has another filter, set by its "
			 "first member: start every instance of a group with the same filter",
			 pfq_name(p), pq->group);
		return PCAP_ERROR;
	}
	if (errno != EINVAL)
		return pfq_errno(p, errno, PCAP_ERROR, "the group's filter");
	/* The kernel's checker refused it (or it is too long): filter here instead. */
	pq->kernel_filter = 0;
	return 0;
}

static int pfq_setdirection(pcap_t *p, pcap_direction_t d)
{
	if (d == PCAP_D_OUT) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: PFQ captures received frames only",
			 pfq_name(p));
		return PCAP_ERROR;
	}
	p->direction = d;
	return 0;
}

static int pfq_getnonblock(pcap_t *p)
{
	return ((struct pcap_pfq *)p->priv)->nonblock;
}

/*
 * Non-blocking reads never wait, so they need no eventfd for pcap_breakloop(): it goes
 * (as pcap-linux.c's does), and comes back for blocking ones, which may then fail.
 */
static int pfq_setnonblock(pcap_t *p, int nonblock)
{
	struct pcap_pfq *pq = p->priv;

	if (nonblock && pq->breakfd >= 0) {
		close(pq->breakfd);
		pq->breakfd = -1;
	} else if (!nonblock && pq->breakfd < 0) {
		pq->breakfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (pq->breakfd < 0)
			return pfq_errno(p, errno, PCAP_ERROR, "eventfd for pcap_breakloop()");
	}
	pq->nonblock = nonblock != 0;
	return 0;
}

static int pfq_stats(pcap_t *p, struct pcap_stat *ps)
{
	struct pcap_pfq *pq = p->priv;
	struct pfq_endpoint_stats stats;

	if (ioctl(p->fd, PFQ_IOC_STATS, &stats))
		return pfq_errno(p, errno, PCAP_ERROR, "stats");
	ps->ps_recv = (u_int)stats.received;
	ps->ps_drop = (u_int)stats.dropped;
	ps->ps_ifdrop = (u_int)(pfq_ifdrops(&pq->src) - pq->ifdrop_base);
	return 0;
}

static int pfq_inject(pcap_t *p, const void *buf, int size)
{
	(void)buf;
	(void)size;
	snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: PFQ does not transmit; send through the "
		 "device itself (%s)", pfq_name(p), ((struct pcap_pfq *)p->priv)->src.device[0]);
	return PCAP_ERROR;
}

static void pfq_breakloop(pcap_t *p)
{
	struct pcap_pfq *pq = p->priv;
	uint64_t one = 1;

	pcap_breakloop_common(p);
	if (pq->breakfd >= 0 && write(pq->breakfd, &one, sizeof(one)) < 0) {
		/* The eventfd's counter is full: a wake-up is pending all the same. */
	}
}

static void pfq_cleanup(pcap_t *p)
{
	struct pcap_pfq *pq = p->priv;

	if (pq->ring) {
		munmap(pq->ring, pq->ring_size);
		pq->ring = NULL;
	}
	free(pq->oneshot);
	pq->oneshot = NULL;
	if (pq->breakfd >= 0) {
		close(pq->breakfd);
		pq->breakfd = -1;
	}
	if (pq->promiscfd >= 0) {
		close(pq->promiscfd);
		pq->promiscfd = -1;
	}
	/* Closes p->fd, the endpoint: it leaves its group, the kernel frees its ring. */
	pcap_cleanup_live_common(p);
}

/* -- joining a group ------------------------------------------------------------------ */

/* Join @group (-1: one of its own), bind the devices, set the wanted steering. */
static int pfq_join(pcap_t *p, struct pcap_pfq *pq, int group)
{
	struct pfq_endpoint_stats stats;
	uint32_t g = group < 0 ? PFQ_GROUP_ANY : (uint32_t)group;
	int d;

	if (ioctl(p->fd, PFQ_IOC_JOIN, &g)) {
		if (errno == EBUSY && group < 0)
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: every PFQ group (0..%d) is in use",
				 pfq_name(p), PFQ_GROUPS - 1);
		else if (errno == EBUSY)
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: PFQ group %d is full (%d endpoints) "
				 "or another network namespace's", pfq_name(p), group,
				 PFQ_GROUP_ENDPOINTS);
		else
			return pfq_errno(p, errno, PCAP_ERROR, "joining the group");
		return PCAP_ERROR;
	}
	if (ioctl(p->fd, PFQ_IOC_STATS, &stats))
		return pfq_errno(p, errno, PCAP_ERROR, "stats");
	pq->group = (int)stats.group;
	for (d = 0; d < pq->src.devices; d++) {
		struct pfq_bind bind = { .queue = -1 };

		snprintf(bind.ifname, sizeof(bind.ifname), "%s", pq->src.device[d]);
		if (ioctl(p->fd, PFQ_IOC_BIND, &bind)) {
			char what[64];

			snprintf(what, sizeof(what), "binding %s", pq->src.device[d]);
			return pfq_errno(p, errno, PCAP_ERROR, what);
		}
	}
	if (pq->steer >= 0) {
		uint32_t steer = (uint32_t)pq->steer | PFQ_STEER_SHARED;

		if (ioctl(p->fd, PFQ_IOC_STEER, &steer) == 0)
			return 0;
		if (errno != EBUSY)
			return pfq_errno(p, errno, PCAP_ERROR, "steering");
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: group %d fans out otherwise, as its "
			 "first member set it: start every instance of a group with the same "
			 "fan-out (PCAP_FANOUT)", pfq_name(p), pq->group);
		return PCAP_ERROR;
	}
	return 0;
}

/* -- activation ----------------------------------------------------------------------- */

static int pfq_open(pcap_t *p)
{
	int err;

	p->fd = open(PFQ_DEVICE, O_RDWR | O_CLOEXEC);
	if (p->fd >= 0)
		return 0;
	err = errno;
	if (err == ENOENT || err == ENODEV || err == ENXIO) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: %s is missing: is pfq.ko loaded?",
			 pfq_name(p), PFQ_DEVICE);
		return PCAP_ERROR;
	}
	if (err == EPERM || err == EACCES) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: opening %s needs CAP_NET_RAW (as a "
			 "packet socket does): run as root", pfq_name(p), PFQ_DEVICE);
		return PCAP_ERROR_PERM_DENIED;
	}
	return pfq_errno(p, err, PCAP_ERROR, "opening " PFQ_DEVICE);
}

/* Every device exists, and PFQ feeds groups from it (tap or capture mode). */
static int pfq_check_devices(pcap_t *p, struct pcap_pfq *pq)
{
	char mode[32];
	int d;

	for (d = 0; d < pq->src.devices; d++) {
		const char *dev = pq->src.device[d];

		if (if_nametoindex(dev) == 0) {
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: no network device %s", pfq_name(p),
				 dev);
			return PCAP_ERROR_NO_SUCH_DEVICE;
		}
		pfq_device_mode(dev, mode, sizeof(mode));
		if (!mode[0]) {
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: PFQ does not track %s (it tracks "
				 "the devices of the initial network namespace)", pfq_name(p), dev);
			return PCAP_ERROR_NO_SUCH_DEVICE;
		}
		if (strcmp(mode, "pass") == 0) {
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: %s is in PFQ's pass mode, where no "
				 "group sees its frames: put it in tap mode first (echo '%s tap' > %s)",
				 pfq_name(p), dev, dev, PFQ_CONTROL);
			return PCAP_ERROR;
		}
	}
	return 0;
}

/*
 * pfq.ko refuses a ring (ENOBUFS) over what the process may lock, RLIMIT_MEMLOCK, unless
 * it has CAP_IPC_LOCK (which dumpcap drops, even as root), or over the module's cap. The
 * limit was 64 KiB by default before Linux 5.16: say which one and how much.
 */
static int pfq_ring_over_limits(pcap_t *p, long slots, uint32_t slot_size)
{
	unsigned long kib = ((unsigned long)slots * slot_size + 1023) / 1024;
	struct rlimit lock;
	char limit[32] = "unlimited";

	if (getrlimit(RLIMIT_MEMLOCK, &lock) == 0 && lock.rlim_cur != RLIM_INFINITY)
		snprintf(limit, sizeof(limit), "%lu KiB", (unsigned long)(lock.rlim_cur / 1024));
	snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: a ring of %ld slots (%lu KiB) is over what "
		 "this process may lock (ulimit -l: %s) or pfq.ko's ring_memory_max: raise "
		 "it, or ask for a smaller buffer", pfq_name(p), slots, kib, limit);
	return PCAP_ERROR;
}

/* The ring: bytes kept per frame and slots, from the settings, snapshot and buffer size. */
static int pfq_make_ring(pcap_t *p, struct pcap_pfq *pq)
{
	const char *slots_env = getenv("PFQ_RX_SLOTS");
	long caplen = p->snapshot, slots;
	uint32_t slot_size;
	int mtu = pfq_mtu(&pq->src);

	/* Nothing longer than the devices' frames (MTU, Ethernet header, one VLAN tag). */
	if (mtu > 0 && caplen > mtu + ETH_HLEN + 4)
		caplen = mtu + ETH_HLEN + 4;
	if (pq->caplen > 0 && caplen > pq->caplen)
		caplen = pq->caplen;
	if (caplen > 65535)
		caplen = 65535;
	if (caplen < 64)
		caplen = 64;
	slot_size = ((uint32_t)sizeof(struct pfq_frame) + caplen + PFQ_SLOT_ALIGN - 1) &
		    ~(uint32_t)(PFQ_SLOT_ALIGN - 1);
	if (slots_env) {
		char *end;

		errno = 0;
		slots = strtol(slots_env, &end, 10);
		if (errno || *end || end == slots_env || slots < 1 || slots > PFQ_MAX_SLOTS) {
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: PFQ_RX_SLOTS='%s': expected "
				 "1..%d", pfq_name(p), slots_env, PFQ_MAX_SLOTS);
			return PCAP_ERROR;
		}
	} else {
		slots = (p->opt.buffer_size ? (long)p->opt.buffer_size : PFQ_DEFAULT_BUFFER) /
			slot_size;
		if (slots < PFQ_MIN_SLOTS)
			slots = PFQ_MIN_SLOTS;
		if (slots > PFQ_MAX_SLOTS)
			slots = PFQ_MAX_SLOTS;
	}
	pq->info.slots = (uint32_t)slots;
	pq->info.caplen = (uint32_t)caplen;
	if (ioctl(p->fd, PFQ_IOC_RING, &pq->info)) {
		if (errno == ENOBUFS)
			return pfq_ring_over_limits(p, slots, slot_size);
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: a ring of %ld slots of %ld bytes: %s",
			 pfq_name(p), slots, caplen, strerror(errno));
		return PCAP_ERROR;
	}
	return 0;
}

static int pfq_map(pcap_t *p, struct pcap_pfq *pq)
{
	struct pfq_ring_head *head;

	pq->ring_size = pq->info.mmap_size;
	pq->ring = mmap(NULL, pq->ring_size, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
	if (pq->ring == MAP_FAILED) {
		pq->ring = NULL;
		return pfq_errno(p, errno, PCAP_ERROR, "mapping the ring");
	}
	head = (struct pfq_ring_head *)pq->ring;
	if (head->magic != PFQ_RING_MAGIC || head->version != PFQ_RING_VERSION) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: a PFQ ring of version %u; this libpcap "
			 "reads version %d: rebuild it for the loaded pfq.ko", pfq_name(p),
			 head->version, PFQ_RING_VERSION);
		return PCAP_ERROR;
	}
	pq->next = __atomic_load_n(&head->tail, __ATOMIC_ACQUIRE);
	return 0;
}

static int pfq_activate(pcap_t *p)
{
	struct pcap_pfq *pq = p->priv;
	int ret;

	pq->breakfd = -1;
	pq->promiscfd = -1;
	if (p->snapshot <= 0 || p->snapshot > MAXIMUM_SNAPLEN)
		p->snapshot = MAXIMUM_SNAPLEN;
	ret = pfq_open(p);
	if (ret == 0)
		ret = pfq_check_devices(p, pq);
	if (ret == 0 && p->opt.promisc)
		ret = pfq_promisc(p, pq);
	if (ret == 0)
		ret = pfq_make_ring(p, pq);
	if (ret == 0)
		ret = pfq_join(p, pq, pq->group);
	if (ret == 0)
		ret = pfq_map(p, pq);
	if (ret == 0) {
		pq->breakfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (pq->breakfd < 0)
			ret = pfq_errno(p, errno, PCAP_ERROR, "eventfd");
	}
	if (ret == 0) {
		pq->oneshot = malloc(pq->info.caplen);
		if (!pq->oneshot)
			ret = pfq_errno(p, errno, PCAP_ERROR, "a frame's buffer");
	}
	if (ret != 0) {
		pfq_cleanup(p);
		return ret;
	}
	p->snapshot = (int)pq->info.caplen;
	p->linktype = DLT_EN10MB;
	p->selectable_fd = p->fd;
	p->read_op = pfq_read;
	p->oneshot_callback = pfq_oneshot;
	p->inject_op = pfq_inject;
	p->setfilter_op = pfq_setfilter;
	p->setdirection_op = pfq_setdirection;
	p->set_datalink_op = NULL;	/* one link type: pcap_set_datalink() refuses others */
	p->getnonblock_op = pfq_getnonblock;
	p->setnonblock_op = pfq_setnonblock;
	p->stats_op = pfq_stats;
	p->breakloop_op = pfq_breakloop;
	p->cleanup_op = pfq_cleanup;
	pq->ifdrop_base = pfq_ifdrops(&pq->src);
	return 0;
}

/* -- creation, device list, fan-out ---------------------------------------------------- */

pcap_t *pfq_create(const char *device, char *ebuf, int *is_ours)
{
	struct pfq_source src;
	struct pfq_settings settings;
	struct pcap_pfq *pq;
	extern char **environ;
	pcap_t *p;
	int ret = pfq_source_parse(device, &src, ebuf, PCAP_ERRBUF_SIZE);

	*is_ours = ret != 1;
	if (ret != 0)
		return NULL;
	if (pfq_settings_of(&src, environ, &settings, ebuf, PCAP_ERRBUF_SIZE))
		return NULL;
	p = PCAP_CREATE_COMMON(ebuf, struct pcap_pfq);
	if (!p)
		return NULL;
	pq = p->priv;
	pq->src = src;
	pq->group = settings.group;
	pq->steer = settings.steer;
	pq->caplen = settings.caplen;
	pq->breakfd = -1;
	pq->promiscfd = -1;
	p->activate_op = pfq_activate;
	p->tstamp_precision_list = malloc(2 * sizeof(u_int));
	if (!p->tstamp_precision_list) {
		pcap_fmt_errmsg_for_errno(ebuf, PCAP_ERRBUF_SIZE, errno, "malloc");
		pcap_close(p);
		return NULL;
	}
	p->tstamp_precision_list[0] = PCAP_TSTAMP_PRECISION_MICRO;
	p->tstamp_precision_list[1] = PCAP_TSTAMP_PRECISION_NANO;
	p->tstamp_precision_count = 2;
	return p;
}

int pfq_findalldevs(pcap_if_list_t *devlistp, char *err_str)
{
	char line[512], name[PFQ_IFNAMSIZ + 8], desc[96];
	FILE *f = fopen(PFQ_CONTROL, "r");

	/* No pfq.ko, or not readable: no pfq: devices, and not an error. */
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char dev[PFQ_IFNAMSIZ], mode[16];
		bpf_u_int32 flags = PCAP_IF_CONNECTION_STATUS_NOT_APPLICABLE;

		if (sscanf(line, "dev=%15s mode=%15s", dev, mode) != 2)
			continue;
		snprintf(name, sizeof(name), "pfq:%s", dev);
		snprintf(desc, sizeof(desc), "%s through PFQ (mode %s)", dev, mode);
		if (!add_dev(devlistp, name, flags, desc, err_str)) {
			/* Out of memory: list what there is rather than fail the whole list. */
			err_str[0] = '\0';
			break;
		}
	}
	fclose(f);
	return 0;
}

int pcap_fanout(pcap_t *p, int group, const char *fanout)
{
	struct pcap_pfq *pq;
	int steer = -1, old;

	if (p->activate_op != pfq_activate) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "pcap_fanout: %s is not a PFQ device "
			 "(pfq:DEVICE)", pfq_name(p));
		return PCAP_ERROR;
	}
	pq = p->priv;
	if (group < -1 || group >= PFQ_GROUPS) {
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "pcap_fanout: group %d: expected 0..%d, or -1 "
			 "for one of its own", group, PFQ_GROUPS - 1);
		return PCAP_ERROR;
	}
	if (fanout) {
		steer = pfq_steer_of(fanout);
		if (steer < 0) {
			snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "pcap_fanout: unknown fan-out '%s' "
				 "(hash, sym, rr, lb, cpu, queue, qm, rnd, random, copy)", fanout);
			return PCAP_ERROR;
		}
	}
	pq->steer = steer;
	if (!p->activated) {
		pq->group = group;
		return 0;
	}
	/* Active: move to the group, the filter with it. */
	old = pq->group;
	if (group != old && ioctl(p->fd, PFQ_IOC_LEAVE) != 0)
		return pfq_errno(p, errno, PCAP_ERROR, "leaving the group");
	if (group != old) {
		if (pfq_join(p, pq, group) != 0)
			return PCAP_ERROR;
		if (pq->kernel_filter && p->fcode.bf_insns)
			return pfq_setfilter(p, &p->fcode);
		return 0;
	}
	if (steer >= 0) {
		uint32_t value = (uint32_t)steer | PFQ_STEER_SHARED;

		if (ioctl(p->fd, PFQ_IOC_STEER, &value) == 0)
			return 0;
		if (errno != EBUSY)
			return pfq_errno(p, errno, PCAP_ERROR, "steering");
		snprintf(p->errbuf, PCAP_ERRBUF_SIZE, "%s: group %d fans out otherwise, as its "
			 "first member set it", pfq_name(p), pq->group);
		return PCAP_ERROR;
	}
	return 0;
}
