"""A UDP RTT probe with microsecond resolution (ping prints whole milliseconds above 100 ms).

``python udp_rtt.py echo PORT`` echoes datagrams; ``python udp_rtt.py probe HOST PORT
INTERVAL_S COUNT`` sends COUNT probes and prints ``send_unix_s rtt_ms`` per reply.
"""

import socket
import sys
import time


def echo(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)


def probe(host: str, port: int, interval_s: float, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent: dict[int, tuple[int, float]] = {}
    next_t = time.monotonic()
    for seq in range(count):
        sent[seq] = (time.monotonic_ns(), time.time())
        s.sendto(seq.to_bytes(4, "big") + bytes(52), (host, port))
        next_t += interval_s
        while (left := next_t - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(2048)
            except socket.timeout:
                break
            now = time.monotonic_ns()
            t_ns, wall = sent.pop(int.from_bytes(data[:4], "big"), (None, None))
            if t_ns is not None:
                print(f"{wall:.6f} {(now - t_ns) / 1e6:.4f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    else:
        probe(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
