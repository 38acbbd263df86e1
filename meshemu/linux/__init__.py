"""The only code that speaks to the Linux kernel: netlink, namespaces, processes, limits."""
