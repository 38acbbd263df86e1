/*
 * dlbench: raw-frame traffic for benchmarks/bench_dataplane.py (compiled by it with gcc).
 *
 *   dlbench flood IFNAME SIZE SECONDS
 *       send SIZE-byte frames (ethertype 0x88b5, broadcast) out of IFNAME as fast as
 *       possible (sendmmsg, 64 per call, PACKET_QDISC_BYPASS); prints {"sent": N, ...}
 *   dlbench tx IFNAME SIZE RATE SECONDS
 *       paced probe frames, each stamped (CLOCK_REALTIME) right before its own send; prints
 *       {"sent": N}; then three end markers
 *   dlbench rx IFNAME
 *       receive probe frames on IFNAME (TPACKET_V2 ring, kernel receive timestamps) until
 *       an end marker or 10 s without frames; prints {"n":..., "p50_ns":..., ...} of
 *       (receive time - stamped send time)
 *
 * Frames: Ethernet header, u64 sequence number (UINT64_MAX: end marker), i64 send time ns,
 * zero padding. Nodes without a handler for ethertype 0x88b5 drop them at once, so a
 * flood costs the receiving namespace next to nothing.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETHERTYPE 0x88b5
#define BATCH 64
#define END_SEQ UINT64_MAX

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "dlbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int tx_socket(const char *ifname, struct sockaddr_ll *addr) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) die("socket");
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    memset(addr, 0, sizeof *addr);
    addr->sll_family = AF_PACKET;
    addr->sll_protocol = 0; /* send only: bound to no protocol, it receives nothing */
    addr->sll_ifindex = (int)if_nametoindex(ifname);
    if (!addr->sll_ifindex) die(ifname);
    if (bind(s, (struct sockaddr *)addr, sizeof *addr) < 0) die("bind");
    return s;
}

static void frame_init(uint8_t *f, size_t size) {
    memset(f, 0, size);
    memset(f, 0xff, 6);                                  /* broadcast */
    memcpy(f + 6, "\x02\x00\x00\x00\xbe\x01", 6);
    f[12] = ETHERTYPE >> 8;
    f[13] = ETHERTYPE & 0xff;
}

static int flood(const char *ifname, size_t size, double seconds) {
    struct sockaddr_ll addr;
    int s = tx_socket(ifname, &addr);
    static uint8_t frames[BATCH][2048];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int k = 0; k < BATCH; k++) {
        frame_init(frames[k], size);
        iov[k].iov_base = frames[k];
        iov[k].iov_len = size;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
    }
    uint64_t sent = 0, failed = 0, seq = 0;
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9), t = t0;
    while (t < end) {
        for (int k = 0; k < BATCH; k++) memcpy(frames[k] + 14, &(uint64_t){seq++}, 8);
        int r = sendmmsg(s, msgs, BATCH, 0);
        if (r < 0) {
            failed++;
        } else {
            sent += (uint64_t)r;
        }
        t = now_ns();
    }
    printf("{\"sent\": %llu, \"failed_calls\": %llu, \"seconds\": %.6f}\n",
           (unsigned long long)sent, (unsigned long long)failed, (t - t0) / 1e9);
    return 0;
}

static int tx(const char *ifname, size_t size, double rate, double seconds) {
    struct sockaddr_ll addr;
    int s = tx_socket(ifname, &addr);
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    static uint8_t f[2048];
    frame_init(f, size);
    uint64_t n = (uint64_t)(rate * seconds), sent = 0;
    int64_t t0 = now_ns() + 1000000;
    /* Sleep until the next frame is due (timer wake-ups come tens of us late here), then
     * send every frame due by then, each stamped right before its own send(): frames leave
     * in short bursts, but the sender takes little CPU from what it measures. */
    for (uint64_t i = 0; i < n;) {
        int64_t due = t0 + (int64_t)(i * 1e9 / rate), left = due - now_ns();
        if (left > 0) {
            struct timespec ts = {left / 1000000000LL, left % 1000000000LL};
            nanosleep(&ts, NULL);
        }
        for (int64_t t = now_ns(); i < n && t0 + (int64_t)(i * 1e9 / rate) <= t; i++) {
            int64_t stamp = now_ns();
            memcpy(f + 14, &i, 8);
            memcpy(f + 22, &stamp, 8);
            if (send(s, f, size, 0) == (ssize_t)size) sent++;
        }
    }
    struct timespec gap = {0, 200000000};
    nanosleep(&gap, NULL); /* let the last probes through before the end markers */
    uint64_t endseq = END_SEQ;
    memcpy(f + 14, &endseq, 8);
    for (int k = 0; k < 3; k++) send(s, f, size, 0);
    printf("{\"sent\": %llu}\n", (unsigned long long)sent);
    return 0;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int rx(const char *ifname) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) die("socket");
    int one = 1, ver = TPACKET_V2;
    setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    if (setsockopt(s, SOL_PACKET, PACKET_VERSION, &ver, sizeof ver) < 0) die("PACKET_VERSION");
    struct tpacket_req req = {1u << 20, 64, 2048, (1u << 20) / 2048 * 64};
    if (setsockopt(s, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) die("PACKET_RX_RING");
    uint8_t *ring = mmap(NULL, (size_t)req.tp_block_size * req.tp_block_nr,
                         PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
    if (ring == MAP_FAILED) die("mmap");
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_protocol = htons(ETHERTYPE)};
    addr.sll_ifindex = (int)if_nametoindex(ifname);
    if (!addr.sll_ifindex) die(ifname);
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    printf("ready\n");
    fflush(stdout);
    size_t cap = 1 << 20, n = 0;
    int64_t *lat = malloc(cap * sizeof *lat);
    uint64_t maxseq = 0;
    uint32_t head = 0;
    int64_t last = now_ns();
    for (;;) {
        struct tpacket2_hdr *h = (void *)(ring + (size_t)head * 2048);
        if (!(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
            /* the ring keeps each frame's kernel timestamp: look every 0.5 ms instead of
             * waking per frame, which would take CPU from what is measured */
            if (now_ns() - last > 10000000000LL) break; /* 10 s without frames */
            struct timespec ts = {0, 500000};
            nanosleep(&ts, NULL);
            continue;
        }
        last = now_ns();
        const uint8_t *f = (const uint8_t *)h + h->tp_mac;
        uint64_t seq;
        int64_t stamp;
        memcpy(&seq, f + 14, 8);
        memcpy(&stamp, f + 22, 8);
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        head = (head + 1) % req.tp_frame_nr;
        if (seq == END_SEQ) break;
        if (seq > maxseq) maxseq = seq;
        if (n == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
        lat[n++] = (int64_t)h->tp_sec * 1000000000LL + h->tp_nsec - stamp;
    }
    struct tpacket_stats st;
    socklen_t sl = sizeof st;
    getsockopt(s, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
    qsort(lat, n, sizeof *lat, cmp64);
#define Q(q) (n ? lat[(size_t)((q) * (n - 1))] : 0)
    printf("{\"n\": %zu, \"min_ns\": %lld, \"p50_ns\": %lld, \"p99_ns\": %lld, "
           "\"p999_ns\": %lld, \"max_ns\": %lld, \"ring_drops\": %u}\n",
           n, (long long)Q(0), (long long)Q(0.5), (long long)Q(0.99), (long long)Q(0.999),
           (long long)Q(1.0), st.tp_drops);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "flood")) return flood(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 6 && !strcmp(argv[1], "tx"))
        return tx(argv[2], atoi(argv[3]), atof(argv[4]), atof(argv[5]));
    if (argc == 3 && !strcmp(argv[1], "rx")) return rx(argv[2]);
    fprintf(stderr, "usage: dlbench flood IF SIZE SECONDS | tx IF SIZE RATE SECONDS | rx IF\n");
    return 2;
}
