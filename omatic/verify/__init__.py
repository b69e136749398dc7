"""Verify: what a built module (.ko) says (modfile) and whom it is signed by (signature),
checked the way the target kernel will check it at load time (checks), and the same checks
as DKMS runs them before install (dkms_check, shipped in the DKMS package with what it
imports). Imports kernels/ and the base only."""
