// SPDX-License-Identifier: GPL-2.0
/*
 * The readers of bench/fanout.py's and bench/pcap.py's delivery measures, in C so that
 * what is timed is the kernel's path to user space and not Python: N processes, each
 * reading one PFQ endpoint (a group of N, hash steering by default), one AF_PACKET
 * socket with a TPACKET_V3 ring (a PACKET_FANOUT group of N) or one pcap_t, counting
 * frames until SIGTERM.
 *
 *   reader pfq DEV N STEER SLOTS CAPLEN GROUP
 *   reader afpacket DEV N MODE BLOCKS BLOCK_SIZE FANOUT_ID [dump]
 *   reader pcap DEV N SNAPLEN BUFFER_SIZE TIMEOUT_MS      (built with -DWITH_PCAP)
 *
 * STEER is enum pfq_steer's value; MODE 0 is PACKET_FANOUT_HASH, 1 LB, 2 CPU; a
 * FANOUT_ID of -1 is a socket of its own; with `dump`, an AF_PACKET reader writes each
 * frame to /dev/null as pcap_dump() does (a record header, the bytes), so that it does
 * the pcap readers' work. The pcap kind is bench/pcap.py's: N processes doing what
 * `tcpdump -w /dev/null` does with each frame (pcap_dump), on whichever libpcap the
 * loader gives them, with the device name and PCAP_* variables as given (pfq:DEV
 * through PFQ's capture source, DEV through libpcap's TPACKET_V3). READER_WORK_NS in
 * the environment adds that many nanoseconds of work per frame to the pcap readers and
 * to the AF_PACKET ones with `dump`, as an application that looks into each frame
 * spends.
 * It prints "ready" once every reader is set up, then, after SIGTERM, one line:
 * "delivered=D dropped=X last_ns=T sleeps=S": frames read, frames the kernel says it
 * dropped for these readers (a full ring), the CLOCK_MONOTONIC instant of the last frame
 * any reader got, and how many times the readers slept waiting (voluntary context
 * switches: each a wake-up by the feed or a timeout). Built by bench/fanout.py (static)
 * and bench/pcap.py (against the libpcap of `pfq-omatic pcap`) and staged into the
 * guest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <pfq/uapi.h>
#ifdef WITH_PCAP
#include <pcap/pcap.h>
#endif

#define MAX_READERS 64

struct result {
	uint64_t delivered, dropped, last_ns, sleeps;
};

static volatile sig_atomic_t stop;
/* READER_WORK_NS: nanoseconds of work per frame read, beside writing it (pcap_dump),
 * as an application that looks into each frame spends: 0 none. */
static uint64_t work_ns;
/* /dev/null, when the AF_PACKET readers write what they read (`dump`) */
static FILE *dump;
#ifdef WITH_PCAP
/* A pcap_t's read may wait in poll() with no timeout (TPACKET_V3 leaves it to the
 * kernel's block timer, which waits for a frame): SIGTERM breaks it out. */
static pcap_t *volatile reading;
#endif

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
#ifdef WITH_PCAP
	if (reading)
		pcap_breakloop(reading);
#endif
}

static void die(const char *what)
{
	fprintf(stderr, "reader: %s: %s\n", what, strerror(errno));
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* The application's work on one frame: the CPU kept busy for work_ns. */
static void work(void)
{
	uint64_t end;

	if (!work_ns)
		return;
	end = now_ns() + work_ns;
	while (now_ns() < end)
		;
}

/* Wait for the fd to be readable, 50 ms at most, so that SIGTERM is seen soon. */
static void wait_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	poll(&p, 1, 50);
}

static struct result read_pfq(char **arg, int index)
{
	struct pfq_ring_info info = { .slots = atoi(arg[2]), .caplen = atoi(arg[3]) };
	struct pfq_endpoint_stats stats;
	struct pfq_bind bind = { .queue = -1 };
	uint32_t group = atoi(arg[4]), steer = atoi(arg[1]);
	struct result r = { 0 };
	struct pfq_ring_head *head;
	uint8_t *ring;
	uint64_t tail;
	int fd;

	fd = open("/dev/pfq", O_RDWR);
	if (fd < 0)
		die("open /dev/pfq");
	if (ioctl(fd, PFQ_IOC_RING, &info) || ioctl(fd, PFQ_IOC_JOIN, &group))
		die("ring, join");
	if (index == 0) {
		snprintf(bind.ifname, sizeof(bind.ifname), "%s", arg[0]);
		if (ioctl(fd, PFQ_IOC_STEER, &steer) || ioctl(fd, PFQ_IOC_BIND, &bind))
			die("steer, bind");
	}
	ring = mmap(NULL, info.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (ring == MAP_FAILED)
		die("mmap");
	head = (struct pfq_ring_head *)ring;
	if (head->version != PFQ_RING_VERSION)
		die("ring version");
	tail = head->tail;
	printf("ready\n");
	fflush(stdout);
	while (!stop) {
		struct pfq_frame *f = (struct pfq_frame *)(ring + info.data_offset +
			(tail % info.slots) * info.slot_size);

		/* Published when seq is tail + 1: acquire, then the slot. */
		if (__atomic_load_n(&f->seq, __ATOMIC_ACQUIRE) != (uint32_t)(tail + 1)) {
			wait_readable(fd);
			continue;
		}
		if (!(f->flags & PFQ_FRAME_EMPTY)) {
			r.delivered++;
			r.last_ns = now_ns();
		}
		tail++;
		__atomic_store_n(&head->tail, tail, __ATOMIC_RELEASE);
	}
	if (ioctl(fd, PFQ_IOC_STATS, &stats))
		die("stats");
	r.dropped = stats.dropped;
	return r;
}

/* What pcap_dump() writes for each frame of a block: a record header, the bytes. */
static void dump_block(struct tpacket_block_desc *b)
{
	struct tpacket3_hdr *h = (struct tpacket3_hdr *)((uint8_t *)b +
							  b->hdr.bh1.offset_to_first_pkt);
	uint32_t i;

	for (i = 0; i < b->hdr.bh1.num_pkts; i++) {
		uint32_t record[4] = { h->tp_sec, h->tp_nsec / 1000, h->tp_snaplen, h->tp_len };

		fwrite(record, sizeof(record), 1, dump);
		fwrite((uint8_t *)h + h->tp_mac, h->tp_snaplen, 1, dump);
		work();
		h = (struct tpacket3_hdr *)((uint8_t *)h + h->tp_next_offset);
	}
}

static struct result read_afpacket(char **arg, int index)
{
	struct tpacket_req3 req = {
		.tp_block_size = atoi(arg[3]),
		.tp_block_nr = atoi(arg[2]),
		.tp_frame_size = 2048,
		.tp_retire_blk_tov = 1,
	};
	struct sockaddr_ll addr = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
	int fanout_modes[] = { PACKET_FANOUT_HASH, PACKET_FANOUT_LB, PACKET_FANOUT_CPU };
	int version = TPACKET_V3, fanout, mode = atoi(arg[1]), block = 0;
	struct tpacket_stats_v3 stats;
	socklen_t len = sizeof(stats);
	struct result r = { 0 };
	uint8_t *ring;
	int fd;

	(void)index;
	req.tp_frame_nr = req.tp_block_size / req.tp_frame_size * req.tp_block_nr;
	fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (fd < 0)
		die("socket");
	if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) ||
	    setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)))
		die("TPACKET_V3 ring");
	ring = mmap(NULL, (size_t)req.tp_block_size * req.tp_block_nr, PROT_READ | PROT_WRITE,
		    MAP_SHARED, fd, 0);
	if (ring == MAP_FAILED)
		die("mmap");
	addr.sll_ifindex = if_nametoindex(arg[0]);
	if (!addr.sll_ifindex || bind(fd, (struct sockaddr *)&addr, sizeof(addr)))
		die("bind");
	fanout = (atoi(arg[4]) & 0xffff) | fanout_modes[mode % 3] << 16;
	if (atoi(arg[4]) >= 0 &&
	    setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof(fanout)))
		die("PACKET_FANOUT");
	printf("ready\n");
	fflush(stdout);
	while (!stop) {
		struct tpacket_block_desc *b = (struct tpacket_block_desc *)
			(ring + (size_t)block * req.tp_block_size);

		if (!(__atomic_load_n(&b->hdr.bh1.block_status, __ATOMIC_ACQUIRE) &
		      TP_STATUS_USER)) {
			wait_readable(fd);
			continue;
		}
		if (b->hdr.bh1.num_pkts) {
			r.delivered += b->hdr.bh1.num_pkts;
			if (dump)
				dump_block(b);
			r.last_ns = now_ns();
		}
		__atomic_store_n(&b->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
		block = (block + 1) % req.tp_block_nr;
	}
	if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &stats, &len))
		die("PACKET_STATISTICS");
	r.dropped = stats.tp_drops;
	return r;
}

#ifdef WITH_PCAP
struct pcap_reader {
	pcap_dumper_t *dump;
	struct result r;
};

static void on_frame(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes)
{
	struct pcap_reader *pr = (struct pcap_reader *)user;

	pcap_dump((u_char *)pr->dump, h, bytes);
	work();
	pr->r.delivered++;
}

static void pcap_die(pcap_t *p, const char *what)
{
	fprintf(stderr, "reader: %s: %s\n", what, pcap_geterr(p));
	exit(2);
}

/* What `tcpdump -w /dev/null` does: pcap_dump each frame, until SIGTERM. */
static struct result read_pcap(char **arg, int index)
{
	char errbuf[PCAP_ERRBUF_SIZE];
	struct pcap_reader pr = { 0 };
	struct pcap_stat stats;
	pcap_t *p;
	int got;

	(void)index;
	p = pcap_create(arg[0], errbuf);
	if (!p) {
		fprintf(stderr, "reader: %s\n", errbuf);
		exit(2);
	}
	if (pcap_set_snaplen(p, atoi(arg[1])) || pcap_set_buffer_size(p, atoi(arg[2])) ||
	    pcap_set_timeout(p, atoi(arg[3])) || pcap_activate(p) < 0)
		pcap_die(p, arg[0]);
	pr.dump = pcap_dump_open(p, "/dev/null");
	if (!pr.dump)
		pcap_die(p, "/dev/null");
	reading = p;
	printf("ready\n");
	fflush(stdout);
	while (!stop) {
		got = pcap_dispatch(p, -1, on_frame, (u_char *)&pr);
		if (got < 0 && got != PCAP_ERROR_BREAK)
			pcap_die(p, "pcap_dispatch");
		if (got > 0)
			pr.r.last_ns = now_ns();
	}
	reading = NULL;
	if (pcap_stats(p, &stats))
		pcap_die(p, "pcap_stats");
	pr.r.dropped = stats.ps_drop;
	pcap_dump_close(pr.dump);
	pcap_close(p);
	return pr.r;
}
#endif

int main(int argc, char **argv)
{
	struct result total = { 0 }, r;
	int n, i, pipes[MAX_READERS][2];
	pid_t pids[MAX_READERS];
	struct result (*read_one)(char **arg, int index);
	struct rusage usage;
	char line[16];

	if (argc == 8 && !strcmp(argv[1], "pfq"))
		read_one = read_pfq;
	else if ((argc == 8 || (argc == 9 && !strcmp(argv[8], "dump"))) &&
		 !strcmp(argv[1], "afpacket"))
		read_one = read_afpacket;
#ifdef WITH_PCAP
	else if (argc == 7 && !strcmp(argv[1], "pcap"))
		read_one = read_pcap;
#endif
	else {
		fprintf(stderr, "usage: reader pfq DEV N STEER SLOTS CAPLEN GROUP\n"
			"       reader afpacket DEV N MODE BLOCKS BLOCK_SIZE FANOUT_ID [dump]\n"
			"       reader pcap DEV N SNAPLEN BUFFER_SIZE TIMEOUT_MS\n");
		return 2;
	}
	n = atoi(argv[3]);
	if (n < 1 || n > MAX_READERS) {
		fprintf(stderr, "reader: 1..%d readers\n", MAX_READERS);
		return 2;
	}
	if (argc == 9) {
		dump = fopen("/dev/null", "w");
		if (!dump)
			die("/dev/null");
	}
	if (getenv("READER_WORK_NS"))
		work_ns = strtoull(getenv("READER_WORK_NS"), NULL, 10);
	signal(SIGTERM, on_term);
	for (i = 0; i < n; i++) {
		if (pipe(pipes[i]))
			die("pipe");
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork");
		if (!pids[i]) {
			char *arg[5] = { argv[2], argv[4], argv[5], argv[6], argv[7] };

			dup2(pipes[i][1], STDOUT_FILENO);
			r = read_one(arg, i);
			getrusage(RUSAGE_SELF, &usage);
			printf("%llu %llu %llu %llu\n", (unsigned long long)r.delivered,
			       (unsigned long long)r.dropped, (unsigned long long)r.last_ns,
			       (unsigned long long)usage.ru_nvcsw);
			return 0;
		}
		close(pipes[i][1]);
		/* One at a time: the first PFQ reader steers and binds the group. */
		if (read(pipes[i][0], line, 6) != 6 || strncmp(line, "ready\n", 6)) {
			fprintf(stderr, "reader: reader %d did not start\n", i);
			return 2;
		}
	}
	printf("ready\n");
	fflush(stdout);
	while (!stop)
		pause();
	for (i = 0; i < n; i++) {
		FILE *in = fdopen(pipes[i][0], "r");
		unsigned long long d, x, t, s;

		kill(pids[i], SIGTERM);
		if (!in || fscanf(in, "%llu %llu %llu %llu", &d, &x, &t, &s) != 4) {
			fprintf(stderr, "reader: reader %d said nothing\n", i);
			return 2;
		}
		total.delivered += d;
		/* PFQ's counters are per endpoint; AF_PACKET's drops too (per socket). */
		total.dropped += x;
		total.sleeps += s;
		if (t > total.last_ns)
			total.last_ns = t;
		waitpid(pids[i], NULL, 0);
	}
	printf("delivered=%llu dropped=%llu last_ns=%llu sleeps=%llu\n",
	       (unsigned long long)total.delivered, (unsigned long long)total.dropped,
	       (unsigned long long)total.last_ns, (unsigned long long)total.sleeps);
	return 0;
}
