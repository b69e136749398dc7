// SPDX-License-Identifier: GPL-2.0
/*
 * pfq_hooktest: every receive entry point a driver may call, fed synthetic frames in a
 * guest, checked against what PFQ counts, returns, captures and hands to the stack.
 *
 * Written as a driver would be: it calls the vanilla entry points (netif_receive_skb,
 * netif_rx, napi_gro_receive, napi_gro_frags, netif_receive_skb_list; before 5.18 also
 * netif_rx_ni and netif_rx_any_context) and pfq-omatic rewrites it into PFQ's hooks like
 * any driver. Each entry point has a netdev of its own
 * ("hk-" and the entry point's short name) and a NAPI context: frames are fed from its
 * poll function, in softirq context, as a NIC's would be.
 *
 * For each entry point and each case (pass, tap, capture, and ring full: capture of more
 * frames than the ring has slots), it sets the device's PFQ mode through
 * /proc/net/pfq/control, opens /proc/net/pfq/pcap/<dev> (PFQ keeps a device's frames only
 * while its pcap file is open), feeds the frames, and checks:
 *   - the value each call returned to the "driver";
 *   - what reached the stack, byte for byte (a packet_type bound to the device);
 *   - PFQ's counters in /proc/net/pfq/stats (packets, to_stack, captured, dropped);
 *   - the pcap stream read from the file opened before, byte for byte.
 * Two cases come first, tap and capture with the pcap file closed: nothing is copied
 * (the control file's queued=0, captured=0), a tap-mode frame counts as neither captured
 * nor dropped, a capture-mode one as dropped, and the file opened after both reads empty.
 * Results are KTAP (Documentation/dev-tools/ktap.rst), one subtest per entry point, kept
 * in /proc/pfq_hooktest and written to the kernel log. Parameter `slots` must be pfq.ko's
 * ring_slots.
 *
 * Then it is a frame source for user space: a write to /proc/pfq_hooktest_inject is a
 * device name (16 bytes, NUL padded), then frames, each a little-endian u16 length, a
 * u16 receive queue (0xffff: none recorded) and the frame from its Ethernet header on.
 * They are fed through that device's entry point from its NAPI poll, the write returns
 * when all were, and a read says what the last injection of each device did, one line
 * each: `dev=hk-gro frames=256 ns=1834000 stack=256` (ns: time to feed them all; stack:
 * frames that reached the stack). hk-gro has a second rx queue with a NAPI of its own,
 * named `hk-gro:1` here: two CPUs feed the one device at once, as a NIC's two queues
 * would (frames of both queues reach the stack, and are counted, as hk-gro's). Two
 * devices, or queues, may be fed at once, from two CPUs.
 */
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/etherdevice.h>
#include <linux/fs.h>
#include <linux/mman.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/proc_fs.h>
#include <linux/rtnetlink.h>
#include <linux/seq_file.h>
#include <linux/skbuff.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

/* Frames per case; the ring-full case sends `slots` + FULL_EXTRA. */
#define FRAMES 48
#define FULL_EXTRA 20
#define MAX_FRAMES 4096
#define FRAME_MIN 60
#define KTAP_SIZE 16384
#define READ_SIZE (1 << 20)
/* How long a feed may take before it is stopped and reported: a loaded TCG guest is slow. */
#define FEED_TIMEOUT_S 30

static unsigned int slots = 64;
module_param(slots, uint, 0444);
MODULE_PARM_DESC(slots, "ring_slots of pfq.ko, for the ring-full case");

/* netif_rx_ni and netif_rx_any_context exist until 5.18, when netif_rx took any context. */
#define HK_OLD_RX (LINUX_VERSION_CODE < KERNEL_VERSION(5, 18, 0))

enum hk_entry {
	HK_RECEIVE_SKB, HK_RX, HK_GRO_RECEIVE, HK_GRO_FRAGS, HK_RECEIVE_LIST,
#if HK_OLD_RX
	HK_RX_NI, HK_RX_ANY,
#endif
	HK_N
};

static const char *const hk_names[HK_N] = {
	"netif_receive_skb", "netif_rx", "napi_gro_receive", "napi_gro_frags",
	"netif_receive_skb_list",
#if HK_OLD_RX
	"netif_rx_ni", "netif_rx_any_context",
#endif
};
static const char *const hk_ifnames[HK_N] = {
	"hk-rcv-skb", "hk-rx", "hk-gro", "hk-frags", "hk-list",
#if HK_OLD_RX
	"hk-rx-ni", "hk-rx-any",
#endif
};

/* hk-gro's second rx queue, its own NAPI on the same device: with it, two CPUs feed one
 * device at once, as a NIC's two queues do. A frame source for user space only; the KTAP
 * cases run on the HK_N devices' first queues. */
#define HK_DEVS (HK_N + 1)
static const char *const hk_gro_queue1 = "hk-gro:1";

/*
 * The cases with no reader come first: a file closed here is released only when insmod
 * returns to user space (fput()'s task work), so once a case has opened a device's pcap
 * file, the device has a reader until the end of the run.
 */
enum hk_case {
	HK_TAP_UNREAD, HK_CAPTURE_UNREAD,
	HK_PASS, HK_TAP, HK_CAPTURE, HK_FULL, HK_CASES
};
static const char *const case_names[HK_CASES] = {
	"tap_unread", "capture_unread", "pass", "tap", "capture", "ring_full"
};
static const char *const case_modes[HK_CASES] = {
	"tap", "capture", "pass", "tap", "capture", "capture"
};

struct hk_dev {
	/* The name injections use: the device's, or for a second queue "DEV:1". */
	const char *name;
	struct net_device *dev;
	struct napi_struct napi;
	/* The device's second queue (its NAPI enabled and disabled with the first), or
	 * NULL; in that queue's own hk_dev, `owner` is the first queue's. */
	struct hk_dev *queue1, *owner;
	struct packet_type ptype;
	enum hk_entry entry;
	/* The job of the next poll: frames [next, count) of this case. */
	unsigned int next, count;
	struct completion done;
	/* What the calls returned: how many returned `want`, and the first other value. */
	unsigned int ret_ok;
	int want, ret_other;
	/* What reached the stack. */
	atomic_t stack, stack_bad;
	/* Frames from user space (/proc/pfq_hooktest_inject), fed instead of the pattern;
	 * once there have been some, what reaches the stack is counted, not checked. */
	struct hk_frame *inject;
	bool injected;
	/* One injection at a time per device (two devices may be fed at once, from two
	 * CPUs), and what the last one did, for reads of /proc/pfq_hooktest_inject. */
	struct mutex inject_mutex;
	unsigned int inject_frames;
	u64 inject_ns;
	u64 inject_start;	/* ktime_get() when it began, ns */
};

/* One injected frame: its bytes are at data + offset. */
struct hk_frame {
	u16 len, queue;
	const u8 *data;
};

static struct hk_dev *hk_devs[HK_DEVS];
static struct proc_dir_entry *inject_proc;
static char *ktap;
static size_t ktap_len;
static struct proc_dir_entry *ktap_proc;

static __printf(1, 2) void out(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	ktap_len += vscnprintf(ktap + ktap_len, KTAP_SIZE - ktap_len, fmt, args);
	va_end(args);
}

/* Frame `seq` of entry point `e`: to the device, ethertype 0x88b5 (local experimental),
 * the sequence number, then a pattern; 60 to 100 bytes. */
static unsigned int frame_len(unsigned int seq)
{
	return FRAME_MIN + (seq % 5) * 10;
}

static void frame_fill(u8 *p, const struct net_device *dev, enum hk_entry e,
		       unsigned int seq)
{
	unsigned int i, len = frame_len(seq);
	struct ethhdr *eth = (struct ethhdr *)p;

	ether_addr_copy(eth->h_dest, dev->dev_addr);
	eth_zero_addr(eth->h_source);
	eth->h_source[0] = 0x02;
	eth->h_source[5] = e + 1;
	eth->h_proto = htons(ETH_P_802_EX1);
	put_unaligned_be32(seq, p + ETH_HLEN);
	for (i = ETH_HLEN + 4; i < len; i++)
		p[i] = (u8)(seq * 7 + i);
}

static bool frame_equal(const u8 *p, unsigned int len, const struct net_device *dev,
			enum hk_entry e, unsigned int seq)
{
	u8 want[FRAME_MIN + 40];

	if (len != frame_len(seq))
		return false;
	frame_fill(want, dev, e, seq);
	return memcmp(p, want, len) == 0;
}

/* --- the stack's end: a packet_type bound to each device ----------------------------- */

static int hk_stack_rcv(struct sk_buff *skb, struct net_device *dev,
			struct packet_type *pt, struct net_device *orig)
{
	struct hk_dev *hd = container_of(pt, struct hk_dev, ptype);
	unsigned int len = skb->len + ETH_HLEN;
	u8 buf[FRAME_MIN + 40];

	if (READ_ONCE(hd->injected)) {
		atomic_inc(&hd->stack);
		consume_skb(skb);
		return NET_RX_SUCCESS;
	}
	if (len > sizeof(buf) || len < ETH_HLEN + 4 || !skb_mac_header_was_set(skb) ||
	    (memcpy(buf, skb_mac_header(skb), ETH_HLEN),
	     skb_copy_bits(skb, 0, buf + ETH_HLEN, skb->len)) ||
	    !frame_equal(buf, len, dev, hd->entry, get_unaligned_be32(buf + ETH_HLEN)))
		atomic_inc(&hd->stack_bad);
	atomic_inc(&hd->stack);
	consume_skb(skb);
	return NET_RX_SUCCESS;
}

/* --- the "driver": feeding frames from NAPI poll ------------------------------------- */

/* Frame `seq`: the pattern, or the seq-th injected frame (with its receive queue). */
static unsigned int hk_frame(struct hk_dev *hd, unsigned int seq, u8 *to)
{
	const struct hk_frame *f;

	if (!hd->inject) {
		frame_fill(to, hd->dev, hd->entry, seq);
		return frame_len(seq);
	}
	f = &hd->inject[seq];
	memcpy(to, f->data, f->len);
	return f->len;
}

static void hk_queue(struct hk_dev *hd, struct sk_buff *skb, unsigned int seq)
{
	if (hd->inject && hd->inject[seq].queue != 0xffff)
		skb_record_rx_queue(skb, hd->inject[seq].queue);
}

static struct sk_buff *hk_skb(struct hk_dev *hd, unsigned int seq)
{
	unsigned int size = hd->inject ? hd->inject[seq].len : FRAME_MIN + 40;
	struct sk_buff *skb = netdev_alloc_skb(hd->dev, size);

	if (!skb)
		return NULL;
	skb_put(skb, hk_frame(hd, seq, skb->data));
	hk_queue(hd, skb, seq);
	skb->protocol = eth_type_trans(skb, hd->dev);
	return skb;
}

/* napi_gro_frags: the frame in a page fragment of napi->skb, Ethernet header included. */
static bool hk_frags(struct hk_dev *hd, unsigned int seq)
{
	struct sk_buff *skb = napi_get_frags(&hd->napi);
	struct page *page;
	unsigned int len;

	if (!skb)
		return false;
	page = dev_alloc_page();
	if (!page)
		return false;
	len = hk_frame(hd, seq, page_address(page));
	hk_queue(hd, skb, seq);
	skb_fill_page_desc(skb, 0, page, 0, len);
	skb->len += len;
	skb->data_len += len;
	skb->truesize += PAGE_SIZE;
	return true;
}

static void hk_record(struct hk_dev *hd, int ret)
{
	if (ret == hd->want)
		hd->ret_ok++;
	else
		hd->ret_other = ret;
}

static int hk_poll(struct napi_struct *napi, int budget)
{
	struct hk_dev *hd = container_of(napi, struct hk_dev, napi);
	LIST_HEAD(list);
	int work = 0;

	while (hd->next < hd->count && work < budget) {
		unsigned int seq = hd->next++;
		struct sk_buff *skb = NULL;

		work++;
		if (hd->entry == HK_GRO_FRAGS) {
			if (hk_frags(hd, seq))
				hk_record(hd, napi_gro_frags(napi));
			continue;
		}
		skb = hk_skb(hd, seq);
		if (!skb)
			continue;
		switch (hd->entry) {
		case HK_RECEIVE_SKB:
			hk_record(hd, netif_receive_skb(skb));
			break;
		case HK_RX:
			hk_record(hd, netif_rx(skb));
			break;
		case HK_GRO_RECEIVE:
			hk_record(hd, napi_gro_receive(napi, skb));
			break;
		case HK_RECEIVE_LIST:
			list_add_tail(&skb->list, &list);
			break;
#if HK_OLD_RX
		case HK_RX_ANY:
			hk_record(hd, netif_rx_any_context(skb));
			break;
#endif
		default:
			kfree_skb(skb);
		}
	}
	if (!list_empty(&list)) {
		netif_receive_skb_list(&list);
		hd->ret_ok += work;	/* returns nothing: nothing to check */
	}
	/* A poll that used its whole budget must not complete: the core polls it again
	 * (and would add it to a poll list it is already on, once completed and scheduled
	 * anew). The job's end comes with a poll that did less.
	 */
	if (hd->next < hd->count || work == budget)
		return budget;
	napi_complete_done(napi, work);
	complete(&hd->done);
	return work;
}

static int hk_open(struct net_device *dev)
{
	struct hk_dev *hd = *(struct hk_dev **)netdev_priv(dev);

	napi_enable(&hd->napi);
	if (hd->queue1)
		napi_enable(&hd->queue1->napi);
	netif_start_queue(dev);
	return 0;
}

static int hk_stop(struct net_device *dev)
{
	struct hk_dev *hd = *(struct hk_dev **)netdev_priv(dev);

	netif_stop_queue(dev);
	napi_disable(&hd->napi);
	if (hd->queue1)
		napi_disable(&hd->queue1->napi);
	return 0;
}

static netdev_tx_t hk_xmit(struct sk_buff *skb, struct net_device *dev)
{
	dev_kfree_skb_any(skb);
	return NETDEV_TX_OK;
}

static const struct net_device_ops hk_ops = {
	.ndo_open = hk_open,
	.ndo_stop = hk_stop,
	.ndo_start_xmit = hk_xmit,
};

/* --- PFQ's files, read and written as a user would -------------------------------- */

/*
 * kernel_read() and kernel_write() need read_iter/write_iter, which PFQ's control and pcap
 * files (like most proc files with their own handlers) do not have. So those are read and
 * written the way read(2) and write(2) do: through the file's own read and write, from a
 * buffer in the memory of the process loading this module (insmod), mapped for the while.
 */
static char __user *ubuf;

static ssize_t hk_read_all(struct file *f, char *buf, size_t size)
{
	loff_t pos = 0;
	ssize_t n = 0, total = 0;

	while (total < size) {
		size_t chunk = min_t(size_t, size - total, PAGE_SIZE);

		if (!f->f_op->read) {	/* a read_iter file (proc_create_single's) */
			n = kernel_read(f, buf + total, chunk, &pos);
		} else {
			n = f->f_op->read(f, ubuf, chunk, &pos);
			if (n > 0 && copy_from_user(buf + total, ubuf, n))
				n = -EFAULT;
		}
		if (n <= 0)
			break;
		total += n;
	}
	return n < 0 ? n : total;
}

static ssize_t hk_read_file(const char *path, char *buf, size_t size)
{
	struct file *f = filp_open(path, O_RDONLY, 0);
	ssize_t n;

	if (IS_ERR(f))
		return PTR_ERR(f);
	n = hk_read_all(f, buf, size);
	filp_close(f, NULL);
	return n;
}

/* The device's pcap file, open: from now on PFQ keeps its frames for us. */
static struct file *hk_open_pcap(struct hk_dev *hd)
{
	char path[64];

	scnprintf(path, sizeof(path), "/proc/net/pfq/pcap/%s", hd->dev->name);
	return filp_open(path, O_RDONLY, 0);
}

static int hk_set_mode(const char *ifname, const char *mode)
{
	char line[64];
	struct file *f = filp_open("/proc/net/pfq/control", O_WRONLY, 0);
	loff_t pos = 0;
	ssize_t n = -EINVAL;
	int len = scnprintf(line, sizeof(line), "%s %s\n", ifname, mode);

	if (IS_ERR(f))
		return PTR_ERR(f);
	if (copy_to_user(ubuf, line, len))
		n = -EFAULT;
	else if (f->f_op->write)
		n = f->f_op->write(f, ubuf, len, &pos);
	filp_close(f, NULL);
	return n == len ? 0 : (n < 0 ? n : -EIO);
}

struct hk_counters {
	unsigned long long packets, to_stack, captured, dropped;
};

/* PFQ's counters of `ifname`, summed over its lines (one per hook). */
static int hk_counters(const char *ifname, char *buf, struct hk_counters *c)
{
	char key[IFNAMSIZ + 6];
	ssize_t n = hk_read_file("/proc/net/pfq/stats", buf, READ_SIZE - 1);
	char *line, *cursor;

	if (n < 0)
		return n;
	buf[n] = 0;
	memset(c, 0, sizeof(*c));
	scnprintf(key, sizeof(key), "dev=%s ", ifname);
	cursor = buf;
	while ((line = strsep(&cursor, "\n"))) {
		unsigned long long v;
		char *field;

		if (strncmp(line, key, strlen(key)))
			continue;
		while ((field = strsep(&line, " "))) {
			if (sscanf(field, "packets=%llu", &v) == 1)
				c->packets += v;
			else if (sscanf(field, "to_stack=%llu", &v) == 1)
				c->to_stack += v;
			else if (sscanf(field, "captured=%llu", &v) == 1)
				c->captured += v;
			else if (sscanf(field, "dropped=%llu", &v) == 1)
				c->dropped += v;
		}
	}
	return 0;
}

/* How many frames the control file says the device's ring holds; -1 if it says not. */
static long hk_queued(const char *ifname, char *buf)
{
	char key[IFNAMSIZ + 6], *line, *cursor, *at;
	ssize_t n = hk_read_file("/proc/net/pfq/control", buf, READ_SIZE - 1);
	unsigned int queued;

	if (n < 0)
		return -1;
	buf[n] = 0;
	scnprintf(key, sizeof(key), "dev=%s ", ifname);
	cursor = buf;
	while ((line = strsep(&cursor, "\n"))) {
		at = strstr(line, " queued=");
		if (!strncmp(line, key, strlen(key)) && at &&
		    sscanf(at, " queued=%u", &queued) == 1)
			return queued;
	}
	return -1;
}

/* Check the pcap stream of `hd` read from `pcap`: `want` frames, seq `first` on, each
 * byte-equal to the frame sent. Returns 0 or writes what differs to `why`. */
static int hk_check_pcap(struct hk_dev *hd, struct file *pcap, char *buf, unsigned int first,
			 unsigned int want, char *why, size_t why_size)
{
	ssize_t n;
	size_t at = 24;
	unsigned int frames = 0;

	n = hk_read_all(pcap, buf, READ_SIZE);
	if (n < 24 || *(u32 *)buf != 0xa1b2c3d4) {
		scnprintf(why, why_size, "pcap: no valid header (%zd bytes)", n);
		return -EINVAL;
	}
	while (at + 16 <= n) {
		u32 incl = *(u32 *)(buf + at + 8), orig = *(u32 *)(buf + at + 12);

		if (at + 16 + incl > n || incl != orig ||
		    !frame_equal(buf + at + 16, incl, hd->dev, hd->entry, first + frames)) {
			scnprintf(why, why_size, "pcap: record %u is not frame %u as sent",
				  frames + 1, first + frames);
			return -EINVAL;
		}
		frames++;
		at += 16 + incl;
	}
	if (at != n || frames != want) {
		scnprintf(why, why_size, "pcap: %u whole records (+%zd bytes), expected %u",
			  frames, n - (ssize_t)at, want);
		return -EINVAL;
	}
	return 0;
}

/* Feed the frames of the job: from NAPI poll, as a NIC's interrupt would; netif_rx_ni from
 * process context, which is what it is for. */
static bool hk_feed(struct hk_dev *hd)
{
#if HK_OLD_RX
	if (hd->entry == HK_RX_NI) {
		while (hd->next < hd->count) {
			struct sk_buff *skb = hk_skb(hd, hd->next++);

			if (skb)
				hk_record(hd, netif_rx_ni(skb));
		}
		return true;
	}
#endif
	local_bh_disable();
	napi_schedule(&hd->napi);
	local_bh_enable();
	if (wait_for_completion_timeout(&hd->done, FEED_TIMEOUT_S * HZ))
		return true;
	/* The caller is about to reuse the job or free the frames the poll reads: end the
	 * poll first. napi_disable() waits for a running poll and completes a scheduled one;
	 * RTNL keeps ndo_stop (which disables it too) away; a device that is down polls not.
	 */
	rtnl_lock();
	if (netif_running(hd->dev)) {
		napi_disable(&hd->napi);
		napi_enable(&hd->napi);
	}
	hd->count = hd->next;
	rtnl_unlock();
	return false;
}

/* What each call returns to the driver in capture mode or not, for the frames PFQ keeps. */
static int hk_expected_return(enum hk_entry e, bool capture)
{
	bool gro = e == HK_GRO_RECEIVE || e == HK_GRO_FRAGS;

	if (!capture)
		return gro ? GRO_NORMAL : NET_RX_SUCCESS;
	return gro ? GRO_CONSUMED : NET_RX_SUCCESS;
}

/*
 * One entry point in one case, the pcap file open while the frames are fed (or not, in
 * the unread cases). The counters as kmod/pfq_hooks.c defines them: captured, a ring
 * took a copy; dropped, a ring that wanted one was full or capture freed a frame no ring
 * took; a tap-mode frame nobody reads is neither. Returns true when every check holds.
 */
static bool hk_case(struct hk_dev *hd, enum hk_case c, unsigned int *seq, char *buf,
		    char *why, size_t why_size)
{
	struct hk_counters before, after;
	bool capture = !strcmp(case_modes[c], "capture");
	bool read = c != HK_TAP_UNREAD && c != HK_CAPTURE_UNREAD;
	unsigned int n = c == HK_FULL ? slots + FULL_EXTRA : FRAMES;
	unsigned int captured = c == HK_PASS || !read ? 0 : (c == HK_FULL ? slots : n);
	unsigned int dropped = capture ? n - captured : 0;
	unsigned int to_stack = capture ? 0 : n;
	unsigned int ret_ok_want = n, first = *seq;
	struct file *pcap = NULL;
	bool ok = false;
	long queued;
	int i, err;

	*why = 0;
	err = hk_set_mode(hd->dev->name, case_modes[c]);
	if (err) {
		scnprintf(why, why_size, "control: writing mode %s failed (%d)", case_modes[c], err);
		return false;
	}
	if (read) {
		pcap = hk_open_pcap(hd);
		if (IS_ERR(pcap)) {
			scnprintf(why, why_size, "pcap: open failed (%ld)", PTR_ERR(pcap));
			return false;
		}
	}
	if (hk_counters(hd->dev->name, buf, &before)) {
		scnprintf(why, why_size, "stats: unreadable");
		goto out;
	}
	atomic_set(&hd->stack, 0);
	atomic_set(&hd->stack_bad, 0);
	hd->ret_ok = 0;
	hd->ret_other = INT_MIN;
	hd->want = hk_expected_return(hd->entry, capture);
	reinit_completion(&hd->done);
	hd->next = first;
	hd->count = first + n;
	*seq += n;
	if (!hk_feed(hd)) {
		scnprintf(why, why_size, "feed: the NAPI poll did not finish in %d s", FEED_TIMEOUT_S);
		goto out;
	}
	/* netif_rx queues to the backlog: wait for the stack to drain it. */
	for (i = 0; i < 100 && atomic_read(&hd->stack) < to_stack; i++)
		msleep(10);
	msleep(20);
	if (hk_counters(hd->dev->name, buf, &after)) {
		scnprintf(why, why_size, "stats: unreadable");
		goto out;
	}
	/* Capture: netif_receive_skb and netif_rx say NET_RX_DROP for a frame no ring took
	 * (full, or nobody reading); the GRO hooks say GRO_CONSUMED for every frame (there
	 * is no GRO_DROP). */
	if (capture && hd->want == NET_RX_SUCCESS && hd->entry != HK_RECEIVE_LIST)
		ret_ok_want = captured;
	if (hd->ret_ok != ret_ok_want ||
	    (ret_ok_want < n && hd->ret_other != NET_RX_DROP)) {
		scnprintf(why, why_size, "returns: %u of %u calls returned %d (another: %d)",
			  hd->ret_ok, n, hd->want, hd->ret_other);
		goto out;
	}
	if (atomic_read(&hd->stack) != to_stack || atomic_read(&hd->stack_bad)) {
		scnprintf(why, why_size, "stack: %d frames reached it (%d not as sent), expected %u",
			  atomic_read(&hd->stack), atomic_read(&hd->stack_bad), to_stack);
		goto out;
	}
	if (after.packets - before.packets != n ||
	    after.to_stack - before.to_stack != to_stack ||
	    after.captured - before.captured != captured ||
	    after.dropped - before.dropped != dropped) {
		scnprintf(why, why_size,
			  "counters: packets=%llu to_stack=%llu captured=%llu dropped=%llu, "
			  "expected %u %u %u %u", after.packets - before.packets,
			  after.to_stack - before.to_stack, after.captured - before.captured,
			  after.dropped - before.dropped, n, to_stack, captured, dropped);
		goto out;
	}
	if (!read) {
		/* Nothing went to the ring (opening the file below empties it: look first). */
		queued = hk_queued(hd->dev->name, buf);
		if (queued < 0) {
			scnprintf(why, why_size, "control: no queued= for %s", hd->dev->name);
			goto out;
		}
		if (queued) {
			scnprintf(why, why_size, "ring: %ld frames queued with no reader", queued);
			goto out;
		}
		/* Opening makes a reader to the end of the run (see enum hk_case): only the
		 * last case without one reads the file, which must hold neither case's frames.
		 */
		if (c != HK_CAPTURE_UNREAD) {
			ok = true;
			goto out;
		}
		pcap = hk_open_pcap(hd);
		if (IS_ERR(pcap)) {
			scnprintf(why, why_size, "pcap: open failed (%ld)", PTR_ERR(pcap));
			return false;
		}
	}
	ok = hk_check_pcap(hd, pcap, buf, first, captured, why, why_size) == 0;
out:
	if (pcap)
		filp_close(pcap, NULL);
	return ok;
}

static void hk_run(void)
{
	char *buf = vmalloc(READ_SIZE);
	char why[160];
	unsigned int seq = 0;
	int e, c;

	out("KTAP version 1\n1..%d\n", HK_N);
	for (e = 0; e < HK_N; e++) {
		struct hk_dev *hd = hk_devs[e];
		bool all = true;

		out("    KTAP version 1\n    # Subtest: %s\n    1..%d\n", hk_names[e], HK_CASES);
		for (c = 0; c < HK_CASES; c++) {
			bool ok = buf && hk_case(hd, c, &seq, buf, why, sizeof(why));

			if (!buf)
				scnprintf(why, sizeof(why), "no memory");
			all &= ok;
			out("    %sok %d %s%s%s\n", ok ? "" : "not ", c + 1, case_names[c],
			    ok ? "" : " # ", ok ? "" : why);
		}
		hk_set_mode(hd->dev->name, "pass");
		out("%sok %d %s\n", all ? "" : "not ", e + 1, hk_names[e]);
	}
	vfree(buf);
}

/* --- frames from user space ------------------------------------------------------------ */

#define INJECT_MAX_LEN 2048
#define INJECT_MAX_BYTES (16 << 20)

/* The frames of a write: count them (@frames NULL) or fill @frames; -EINVAL if bad. */
static int hk_inject_parse(const u8 *data, size_t size, struct hk_frame *frames)
{
	size_t at = IFNAMSIZ;
	unsigned int n = 0, len;

	while (at + 4 <= size) {
		len = get_unaligned_le16(data + at);
		if (len < ETH_HLEN || len > INJECT_MAX_LEN || at + 4 + len > size)
			return -EINVAL;
		if (frames) {
			frames[n].len = len;
			frames[n].queue = get_unaligned_le16(data + at + 2);
			frames[n].data = data + at + 4;
		}
		n++;
		at += 4 + len;
	}
	return at == size && n ? n : -EINVAL;
}

static ssize_t hk_inject_write(struct file *file, const char __user *from, size_t count,
			       loff_t *ppos)
{
	struct hk_frame *frames = NULL;
	struct hk_dev *hd = NULL;
	char name[IFNAMSIZ];
	ktime_t start;
	int n, e;
	bool fed;
	u8 *data;

	if (count <= IFNAMSIZ || count > INJECT_MAX_BYTES)
		return -EINVAL;
	data = vmemdup_user(from, count);
	if (IS_ERR(data))
		return PTR_ERR(data);
	memcpy(name, data, IFNAMSIZ);
	name[IFNAMSIZ - 1] = '\0';
	for (e = 0; e < HK_DEVS; e++)
		if (!strcmp(hk_devs[e]->name, name))
			hd = hk_devs[e];
	n = hk_inject_parse(data, count, NULL);
	if (!hd || n < 0) {
		kvfree(data);
		return hd ? n : -ENODEV;
	}
	frames = kvmalloc_array(n, sizeof(*frames), GFP_KERNEL);
	if (!frames) {
		kvfree(data);
		return -ENOMEM;
	}
	hk_inject_parse(data, count, frames);
	mutex_lock(&hd->inject_mutex);
	WRITE_ONCE(hd->injected, true);
	if (hd->owner)	/* its frames reach the stack as the device's */
		WRITE_ONCE(hd->owner->injected, true);
	atomic_set(&hd->stack, 0);
	hd->inject = frames;
	hd->next = 0;
	hd->count = n;
	reinit_completion(&hd->done);
	start = ktime_get();
	fed = hk_feed(hd);
	hd->inject_ns = ktime_to_ns(ktime_sub(ktime_get(), start));
	hd->inject_start = ktime_to_ns(start);
	hd->inject_frames = n;
	hd->inject = NULL;
	mutex_unlock(&hd->inject_mutex);
	kvfree(frames);
	kvfree(data);
	return fed ? count : -ETIMEDOUT;
}

static int hk_inject_show(struct seq_file *m, void *v)
{
	struct hk_dev *hd;
	int e;

	for (e = 0; e < HK_DEVS; e++) {
		hd = hk_devs[e];
		if (!hd)
			continue;
		mutex_lock(&hd->inject_mutex);
		if (hd->inject_frames)
			seq_printf(m, "dev=%s frames=%u ns=%llu start=%llu stack=%d\n",
				   hd->name, hd->inject_frames, hd->inject_ns,
				   hd->inject_start, atomic_read(&hd->stack));
		mutex_unlock(&hd->inject_mutex);
	}
	return 0;
}

static int hk_inject_open(struct inode *inode, struct file *file)
{
	return single_open(file, hk_inject_show, NULL);
}

static const struct proc_ops hk_inject_ops = {
	.proc_open = hk_inject_open,
	.proc_read = seq_read,
	.proc_write = hk_inject_write,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

/* --- set-up and tear-down -------------------------------------------------------------- */

static int hk_ktap_show(struct seq_file *m, void *v)
{
	seq_write(m, ktap, ktap_len);
	return 0;
}

static void hk_free(void)
{
	int e;

	for (e = 0; e < HK_DEVS; e++) {
		struct hk_dev *hd = hk_devs[e];

		if (!hd)
			continue;
		/* A second queue's NAPI goes with its device, its owner's, freed before. */
		if (hd->dev && !hd->owner) {
			if (hd->ptype.type)
				dev_remove_pack(&hd->ptype);
			if (hd->dev->reg_state == NETREG_REGISTERED)
				unregister_netdev(hd->dev);
			netif_napi_del(&hd->napi);
			free_netdev(hd->dev);
		}
		kfree(hd);
		hk_devs[e] = NULL;
	}
}

/* An rx queue's state, in hk_devs[index], freed by hk_free(). */
static struct hk_dev *hk_new(int index, enum hk_entry e, const char *name)
{
	struct hk_dev *hd = kzalloc(sizeof(*hd), GFP_KERNEL);

	if (!hd)
		return NULL;
	hk_devs[index] = hd;
	hd->name = name;
	hd->entry = e;
	init_completion(&hd->done);
	mutex_init(&hd->inject_mutex);
	return hd;
}

static void hk_napi_add(struct hk_dev *hd)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 1, 0)
	netif_napi_add(hd->dev, &hd->napi, hk_poll);
#else
	netif_napi_add(hd->dev, &hd->napi, hk_poll, NAPI_POLL_WEIGHT);
#endif
}

static int hk_add(int index, enum hk_entry e, const char *name)
{
	struct hk_dev *hd = hk_new(index, e, name);
	struct net_device *dev;
	u8 addr[ETH_ALEN] = { 0x02, 0x00, 0x00, 0x00, 0x01, 0x00 };
	int err;

	if (!hd)
		return -ENOMEM;
	dev = alloc_etherdev(sizeof(struct hk_dev *));
	if (!dev)
		return -ENOMEM;
	hd->dev = dev;
	*(struct hk_dev **)netdev_priv(dev) = hd;
	strscpy(dev->name, name, IFNAMSIZ);
	dev->netdev_ops = &hk_ops;
	addr[5] = index + 1;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(5, 15, 0)
	eth_hw_addr_set(dev, addr);
#else
	ether_addr_copy(dev->dev_addr, addr);
#endif
	hk_napi_add(hd);
	err = register_netdev(dev);
	if (err)
		return err;
	hd->ptype.type = htons(ETH_P_802_EX1);
	hd->ptype.dev = dev;
	hd->ptype.func = hk_stack_rcv;
	dev_add_pack(&hd->ptype);
	rtnl_lock();
	err = dev_open(dev, NULL);
	rtnl_unlock();
	return err;
}

/* A second rx queue of `owner`'s device: a NAPI of its own, enabled with the device. */
static int hk_add_queue(int index, struct hk_dev *owner, const char *name)
{
	struct hk_dev *hd = hk_new(index, owner->entry, name);

	if (!hd)
		return -ENOMEM;
	hd->owner = owner;
	hd->dev = owner->dev;
	hk_napi_add(hd);
	/* RTNL keeps ndo_open and ndo_stop away while the device learns of its queue. */
	rtnl_lock();
	if (netif_running(hd->dev))
		napi_enable(&hd->napi);
	owner->queue1 = hd;
	rtnl_unlock();
	return 0;
}

static int __init hk_init(void)
{
	int e, err;

	if (slots < 1 || slots > MAX_FRAMES - FULL_EXTRA)
		return -EINVAL;
	ktap = kzalloc(KTAP_SIZE, GFP_KERNEL);
	if (!ktap)
		return -ENOMEM;
	ubuf = (char __user *)vm_mmap(NULL, 0, PAGE_SIZE, PROT_READ | PROT_WRITE,
				      MAP_ANONYMOUS | MAP_PRIVATE, 0);
	if (IS_ERR_VALUE((unsigned long)ubuf)) {
		kfree(ktap);
		return -ENOMEM;
	}
	for (e = 0; e < HK_DEVS; e++) {
		err = e < HK_N ? hk_add(e, e, hk_ifnames[e]) :
			hk_add_queue(e, hk_devs[HK_GRO_RECEIVE], hk_gro_queue1);
		if (err) {
			pr_err("pfq_hooktest: setting up device %d failed (%d)\n", e, err);
			hk_free();
			vm_munmap((unsigned long)ubuf, PAGE_SIZE);
			kfree(ktap);
			return err;
		}
	}
	hk_run();
	vm_munmap((unsigned long)ubuf, PAGE_SIZE);
	ktap_proc = proc_create_single("pfq_hooktest", 0444, NULL, hk_ktap_show);
	inject_proc = proc_create("pfq_hooktest_inject", 0600, NULL, &hk_inject_ops);
	pr_info("pfq_hooktest: results in /proc/pfq_hooktest\n");
	return 0;
}

static void __exit hk_exit(void)
{
	proc_remove(inject_proc);
	proc_remove(ktap_proc);
	hk_free();
	kfree(ktap);
}

module_init(hk_init);
module_exit(hk_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pfq-omatic: every receive entry point through PFQ, checked in a guest");
