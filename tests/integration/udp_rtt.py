"""A UDP RTT probe with microsecond resolution (ping prints whole milliseconds above 100 ms).

``python udp_rtt.py echo PORT`` echoes datagrams; ``python udp_rtt.py probe HOST PORT
INTERVAL_S COUNT`` sends COUNT probes and prints ``send_unix_s rtt_ms`` per reply.

Like TWAMP, it measures the network, not the two Python processes: arrivals are the
kernel's receive timestamps (``SO_TIMESTAMPNS``), and the echo puts the time it held the
datagram (kernel arrival to just before ``sendto``) into the reply, which the probe
subtracts.
"""

import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@qq")


def _socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind(("0.0.0.0", port))
    return s


def _recv(s: socket.socket) -> tuple[bytes, tuple, int]:
    """A datagram, its sender and its kernel arrival time (ns, CLOCK_REALTIME)."""
    data, anc, _, addr = s.recvmsg(2048, socket.CMSG_SPACE(TIMESPEC.size))
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = TIMESPEC.unpack(raw[: TIMESPEC.size])
            return data, addr, sec * 1_000_000_000 + nsec
    return data, addr, time.time_ns()


def echo(port: int) -> None:
    s = _socket(port)
    while True:
        data, addr, rx = _recv(s)
        held = time.time_ns() - rx
        s.sendto(data[:4] + struct.pack("!q", held) + data[12:], addr)


def probe(host: str, port: int, interval_s: float, count: int) -> None:
    s = _socket()
    sent: dict[int, int] = {}
    next_t = time.monotonic()
    for seq in range(count):
        sent[seq] = time.time_ns()
        s.sendto(seq.to_bytes(4, "big") + bytes(52), (host, port))
        next_t += interval_s
        while (left := next_t - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, _, rx = _recv(s)
            except TimeoutError:
                break
            t_ns = sent.pop(int.from_bytes(data[:4], "big"), None)
            if t_ns is not None:
                held = struct.unpack("!q", data[4:12])[0]
                print(f"{t_ns / 1e9:.6f} {(rx - t_ns - held) / 1e6:.4f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        probe(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
