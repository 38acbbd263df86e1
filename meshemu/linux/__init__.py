"""The only code that speaks to the Linux kernel, one concern per module.

* :mod:`~meshemu.linux.netlink`: the rtnetlink codec (message builders, the numpy bulk route
  records, dump and error parsers) and the :class:`~meshemu.linux.netlink.Netlink` socket;
* :mod:`~meshemu.linux.netns`: entering network namespaces from threads, their inodes and
  sysctls;
* :mod:`~meshemu.linux.ifaces`: interface ioctls (up, offloads, MAC) and link state;
* :mod:`~meshemu.linux.procs`: ``/proc`` scans, killing and waiting;
* :mod:`~meshemu.linux.commands`: running ``ip``/``tc`` (one command or a ``-batch``);
* :mod:`~meshemu.linux.limits`: root, open files, ptys, memory.

None of them imports Mininet or anything from :mod:`meshemu.live`.
"""
