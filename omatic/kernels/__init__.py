"""Kernels: what one kernel is (kernel), where one is found for a name (find: installed
here, kept in a Debian system, or offered by the archive), Debian's archive (archive), and
the pristine Debian systems kernels and their tools live in (system).

Imports only the base modules of omatic (errors, data, cache, versions...)."""
