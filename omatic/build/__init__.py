"""Build: a driver's source found and staged (source), its receive calls rewritten
(rewrite, tree, difftext), built with pfq.ko by the kernel's Kbuild (kbuild), the steps in
order from a driver name to a verified module (pipeline), the NIC drivers a kernel can
build (nics), and the DKMS package of all this (dkms). Imports verify/, kernels/ and the
base only."""
