"""PFQ from user space: pfq.ko's contract mirrored (uapi), endpoints of /dev/pfq with their
rings and BPF filters (endpoint), the fan-out configuration grammar (config) and the
`pfq-omatic capture` command (capture). The standard library and omatic.errors only: it
runs in the lab's guests, whose python3 has nothing else."""
