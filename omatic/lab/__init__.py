"""The lab: accelerated drivers and PFQ's hooks proven in QEMU guests. On the host: the
machine and its initramfs (vm), the guest's console (console), the Python the guest gets
(guestpy), the frames injected (frames), KTAP read back (ktap), and the labs themselves:
a NIC driver's (driver, with its fan-out phase, fanout_phase) and the hooks' (hooks).
In the guest, with the standard library only: groupcheck, safetycheck and fuzzcheck,
which drive /dev/pfq through omatic.pfq, pcapcheck, which runs Debian's tcpdump on the
libpcap of omatic.pcap, and rxbench, which times PFQ against AF_PACKET
(afpacket). Imports build/, verify/, kernels/, pfq/ and the base."""
