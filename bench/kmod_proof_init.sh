#!/bin/busybox sh
# Guest side of bench/kmod_proof.py (the /init of its initramfs): load pfq.ko and the
# accelerated e1000e, then for each phase set the mode, announce how many frames it
# expects (PFQ-READY), wait until pfq counts them, and print the counters and the pcap
# stream (base64) between markers. Then bad control input, device removal, unload.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
dmesg -n 1

P=/proc/net/pfq
HOOK=napi_gro_receive

insmod /pfq.ko ring_slots=256 || echo "PFQ-FAIL insmod pfq"
insmod /e1000e.ko || echo "PFQ-FAIL insmod e1000e"
ip link set lo up
ip link set eth0 up
ip addr add 192.0.2.2/24 dev eth0
arp -i eth0 -s 192.0.2.1 02:00:00:00:00:01
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do
	sleep 0.1; i=$((i + 1))
done

packets() {
	grep "^dev=eth0 hook=$HOOK " $P/stats | sed 's/.* packets=\([0-9]*\).*/\1/'
}

# phase NAME MODE FRAMES READ_PCAP
phase() {
	echo "eth0 $2" > $P/control || echo "PFQ-FAIL control eth0 $2"
	want=$(( $(packets) + $3 ))
	echo "PFQ-READY $1 $3"
	i=0
	while [ "$(packets)" -lt $want ] && [ $i -lt 300 ]; do
		sleep 0.1; i=$((i + 1))
	done
	sleep 1
	grep '^dev=eth0 ' $P/stats | sed "s/^/PFQ-STATS $1 /"
	grep '^dev=eth0 ' $P/control | sed "s/^/PFQ-CONTROL $1 /"
	if [ "$4" = yes ]; then
		echo "PFQ-PCAP-BEGIN $1"
		base64 $P/pcap/eth0
		echo "PFQ-PCAP-END $1"
		echo "PFQ-AFTER-READ $1 $(base64 $P/pcap/eth0 | base64 -d | wc -c)"
	fi
	echo "PFQ-DONE $1"
}

phase pass pass 200 yes
phase tap tap 200 yes
phase capture capture 200 yes
# ring_slots=256: 300 frames without reading fill the ring, the rest are dropped
phase overflow capture 300 yes

echo "PFQ-CHECK bad-device $(echo 'nosuch0 tap' 2>/dev/null > $P/control && echo accepted || echo rejected)"
echo "PFQ-CHECK bad-mode $(echo 'eth0 fly' 2>/dev/null > $P/control && echo accepted || echo rejected)"
echo "eth0 tap" > $P/control
echo "PFQ-CHECK pcap-files-before $(ls $P/pcap | tr '\n' ' ')"
rmmod e1000e && echo "PFQ-CHECK rmmod-e1000e ok"
echo "PFQ-CHECK pcap-files-after $(ls $P/pcap | tr '\n' ' ')"
rmmod pfq && echo "PFQ-CHECK rmmod-pfq ok"
echo "PFQ-CHECK proc-after-unload $(ls /proc/net/pfq 2>&1 | head -1)"
dmesg | grep -iE 'pfq|e1000e|warn|bug|leak' | sed 's/^/PFQ-DMESG /'
echo "PFQ-END"
poweroff -f
