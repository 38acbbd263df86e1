"""The VM's kernel itself: sch_netem is there and delays as told (no meshemu code involved)."""

from __future__ import annotations

from vmhelpers import assert_rtt, ping


def test_netem_delay_on_both_ends_of_a_veth_gives_twice_the_delay_as_rtt(netns_factory):
    a, b = netns_factory(), netns_factory()
    a.run(["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", str(b.pid)])
    for ns, dev, addr in ((a, "va", "10.9.0.1/30"), (b, "vb", "10.9.0.2/30")):
        ns.run(["ip", "addr", "add", addr, "dev", dev])
        ns.run(["ip", "link", "set", dev, "up"])
        ns.run(["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "25ms"])
        assert ns.qdisc(dev)["kind"] == "netem"
    ping(a, "10.9.0.2", count=1)  # ARP, so it does not inflate the measured RTTs
    assert_rtt(ping(a, "10.9.0.2", count=20), expected_ms=50.0)
