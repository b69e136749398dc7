"""libpcap with PFQ: Debian's libpcap source package with PFQ's capture source (libpcap/)
added by code (`rewrite`), built as Debian builds it and installed privately (`build`),
and unmodified applications run on it (`run`)."""
