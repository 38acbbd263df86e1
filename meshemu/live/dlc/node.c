/*
 * meshemu-node: what holds a meshemu node's network namespace (C11, Linux).
 *
 * An emulation's node needs a network namespace that lives as long as the run, and a
 * process whose pid names it (`ip link ... netns PID`, `mnexec -a PID`). Vanilla Mininet
 * keeps a bash in each namespace for that; a bash costs about 220 KiB more per node than
 * this program (benchmarks/bench_vs_mininet.py, shells), so meshemu starts a node's bash
 * only when something uses it (meshemu/live/nodes.py: MeshNode).
 *
 *     meshemu-node mininet:<name> meshemu-run=<run_id>
 *
 * It makes a network namespace of its own (unshare(2) CLONE_NEWNET) and then reads its
 * standard input until end of file: the emulation's process keeps the other end of that
 * pipe, so the holders go when it does, even if it is killed (as Mininet's shells go with
 * their ptys). The arguments are only markers for `meshemu clean`. Statically linked, so
 * there is no dynamic loader to run or relocate per node.
 *
 * Build: make -C meshemu/live/dlc (install.sh does it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    if (unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr, "meshemu-node: unshare(CLONE_NEWNET): %s (run as root)\n",
                strerror(errno));
        return 1;
    }
    char buf[64];
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR)) return 0;
    }
}
