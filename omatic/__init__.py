"""pfq-omatic: make PFQ-accelerated Linux NIC drivers and prove they work."""

__version__ = "0.1.0"
