/*
 * meshemu-delayline: the compiled userspace delay line (C11, Linux).
 *
 * A drop-in for the Python worker `python -m meshemu.live.delayline` (same command line,
 * same binary control protocol on stdin/stdout, same model); see the docstring of
 * meshemu/live/delayline.py, which is the reference. In short, a frame that arrives at
 * time t (the kernel's receive timestamp in the ring) on one end of a link leaves through
 * the other end at
 *
 *     start     = max(t, link_free)                 drop-tail: dropped if queue_packets wait
 *     link_free = start + size_bytes * 8 / rate_bps serialisation
 *     departure = max(link_free + delay, previous departure)   a link is FIFO
 *
 * How it is fast:
 * - frames come from one PACKET_RX_RING (TPACKET_V2, memory-mapped, per-frame status, no
 *   syscall per frame) and are copied into a pool of 2 KiB buffers, so ring slots go back
 *   to the kernel at once whatever the link delays;
 * - each direction of a link is a FIFO (departures never decrease), so the timer is a heap
 *   of directions keyed by the departure of their head frame: O(log active directions) per
 *   frame, not per-frame heap entries;
 * - due frames leave in batches through one sendmmsg() on one unbound packet socket with
 *   PACKET_QDISC_BYPASS (straight to the veth's xmit, no qdisc, no taps);
 * - it sleeps in ppoll() until shortly before the next departure and spins for the rest.
 *   How long before ("lead", at most SPIN_NS): a running estimate of the p95 of how late
 *   the timer wakes it here (tens of us in a VM whose idle vCPUs halt), plus a margin;
 * - spinning as a real-time process takes the CPU from everything else, so it has a
 *   budget per SPIN_WINDOW_NS: SPIN_BUDGET while no CPU is idle (the runnable count in
 *   /proc/loadavg, looked at every ms, exceeds the CPUs less CONTENDED_SLACK), SPIN_CAP
 *   in all (under the kernel's RT throttling limit of 95 %). Out of budget it sleeps up to
 *   the departure. (Starving other tasks for long also backfires: since Linux 6.12 the
 *   fair server then preempts real-time tasks for milliseconds.);
 * - lookahead: a frame that arrives at t leaves at t + delay or later, so once the ring is
 *   empty at time e no frame can be due before e + (the smallest delay of its links). Up
 *   to then (less LOOKAHEAD_MARGIN_NS, at most LOOKAHEAD_MAX_NS) the worker does not watch
 *   the ring at all: arrivals wake nobody (the ring holds them, with their kernel
 *   timestamps, so the arrival time stays exact) and are taken in one batch at the next
 *   wake-up. Without it every frame woke the real-time worker, which then preempted the
 *   very processes sending the traffic. With links shorter than LOOKAHEAD_MIN_NS, or after
 *   LOOKAHEAD_IDLE_NS without frames, the worker sleeps on the ring as well;
 * - with --workers W, worker i attaches a classic BPF filter that only accepts frames whose
 *   ingress ifindex % W == i, so every direction belongs to exactly one worker and nothing
 *   is shared: no locks anywhere.
 *
 * The access model (OP_ACCESS, as in delayline.py): per direction, Gilbert-Elliott loss
 * before the uniform loss, and a departure of (next frame boundary at or after
 * serialisation end + grant) + constant + delay; directions without it take no extra work
 * per frame (one flag test each for loss and departure).
 *
 * The fidelity guard (OP_GUARD): per direction, frames sent and the lateness of each
 * (actual send time - scheduled departure; within one sendmmsg batch frame k of n is
 * taken as handed to the kernel at t0 + k/n of the call's span, t0 the clock before it:
 * a veth runs the receiving stack inside the call, so the clock after it would charge
 * the receiver's work, and any stall during it, to the frame) in a
 * log-spaced histogram whose buckets are at most 1/16 of their lower edge wide; plus the
 * ring's drops (PACKET_STATISTICS tp_drops: frames the kernel could not put in the ring
 * because this worker fell behind); and the frames in each direction's drop-tail queue
 * when the guard is read (counted from the ends ring, which the data path keeps anyway).
 *
 * GSO passthrough (--gso; the shaper's gso=True): both packet sockets use PACKET_VNET_HDR,
 * so every frame carries a struct virtio_net_hdr (as a tap device's do), and the nodes'
 * ends keep their segmentation and checksum offloads. A TCP burst then arrives as one
 * super-frame of up to 64 KiB (the ring holds its head; PACKET_COPY_THRESH puts the whole
 * in the socket's queue, read with recv() in the same order) and leaves whole, the
 * kernel finishing its checksums and segments wherever it goes next. The model still
 * counts segments: a super-frame of n segments serialises as n frames back to back
 * (its wire bytes: the frame plus n - 1 copies of its headers), takes n places in the
 * drop-tail queue, and counts n packets; it leaves when its last segment would, so its
 * first arrives up to (n - 1) frames' serialisation late, which the shaper bounds (100 us)
 * by capping the nodes' ends' gso_max_segs for the link's rate. A loss takes it whole.
 *
 * Build: make -C meshemu/live/dlc (install.sh does it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the control protocol is little-endian; this build assumes a little-endian host"
#endif

/* ---- control protocol (meshemu/live/delayline.py: HDR, LINK_REC, ID_REC, ...) ---------- */
enum {
    OP_ADD = 1, OP_UPDATE = 2, OP_REMOVE = 3, OP_COUNTERS = 4, OP_QUIT = 5, OP_GUARD = 6,
    OP_ACCESS = 7
};
enum { ST_OK = 0, ST_ERROR = 1 };
#define HDR_SIZE 5        /* <BI   op/status, count/nbytes */
#define LINK_REC_SIZE 33  /* <IqdIdB link_id, delay_ns, rate_bps, queue_packets, loss, up */
/* <IBqqqqdddd link_id, direction, constant_ns, frame_ns, grant_min_ns, grant_max_ns,
   Gilbert-Elliott p, r, loss_bad, loss_good (delayline.py: the access model) */
#define ACCESS_REC_SIZE 69
#define ID_REC_SIZE 4     /* <I    link_id */
#define CNT_REC_SIZE 28   /* <IQQQ link_id, packets, bytes, dropped */
#define GUARD_REC_SIZE 33 /* <IBQqqI link_id, direction, frames, lateness p99 ns, max ns,
                            queue frames */
#define WORKER_LINK_ID 0xFFFFFFFFu

/* ---- tuning (the same values as the Python worker) -------------------------------------- */
#ifndef SPIN_NS
#define SPIN_NS 120000LL              /* spin for the last this-many ns before a departure */
#endif
#ifndef SPIN_BUDGET
#define SPIN_BUDGET 0.3               /* share of each window spent spinning while others wait */
#endif
#ifndef SPIN_CAP
#define SPIN_CAP 0.8                  /* ... and at most this share in all */
#endif
#define SPIN_MIN_NS 10000LL           /* the spin lead is at least this */
#ifndef CONTENDED_SLACK
#define CONTENDED_SLACK 1             /* contended: more than ncpus - this runnable */
#endif
#define LEAD_MARGIN_NS 10000LL        /* lead = estimated p95 timer overshoot + this */
#ifndef SPIN_WINDOW_NS
#define SPIN_WINDOW_NS 100000000LL
#endif
#define RT_PRIORITY 10                /* SCHED_FIFO priority */
#define CTRL_CHECK_NS 1000000LL       /* look at stdin at least this often when busy */
/* wake this much before the lookahead runs out: time to wake (timer overshoot) and spin */
#define LOOKAHEAD_MARGIN_NS (SPIN_NS + 50000LL)
#ifndef LOOKAHEAD_MIN_NS
#define LOOKAHEAD_MIN_NS 400000LL     /* smallest link delay that lets the ring go unwatched */
#endif
#ifndef LOOKAHEAD_MAX_NS
#define LOOKAHEAD_MAX_NS 2000000LL    /* leave the ring unwatched for at most this long */
#endif
#define LOOKAHEAD_IDLE_NS 10000000LL  /* no frame for this long: watch the ring (idle) */
#ifndef RX_BATCH
#define RX_BATCH 256                  /* frames taken from the ring before sending */
#endif
#define TX_BATCH 256                  /* frames per sendmmsg */
#define FRAME_SIZE 2048
#define BLOCK_SIZE (1u << 20)
#define BLOCK_NR 32u                  /* 16,384 frames, 32 MiB */
#define BUF_SIZE 2048                 /* a pool buffer holds any frame the ring can hold */
#define SLAB_BUFS 1024
#define VNET_SIZE ((uint32_t)sizeof(struct virtio_net_hdr)) /* --gso: before every frame */
#define BIG_SIZE (65536u + 256u)       /* --gso: the largest super-frame with its headers */
#define BIG_MAX_BYTES (1ull << 30)     /* --gso: bytes of super-frames in flight at most */
#define POOL_MAX_BUFS (1u << 19)      /* 1 GiB of frames in flight per worker at most */

/* ---- lateness histogram: bucket(v) = v for v < 32, else (s << 4) + (v >> s) with
 *      s = bit_length(v) - 5: 16 buckets per octave, each at most 1/16 of its lower edge
 *      wide; values from 2^36 ns (68 s) on share the last bucket. ---------------------- */
#define LAT_BUCKETS 528
#define LAT_CLAMP ((1LL << 36) - 1)

static inline uint32_t lat_bucket(int64_t v) {
    if (v < 32) return v > 0 ? (uint32_t)v : 0;
    if (v > LAT_CLAMP) v = LAT_CLAMP;
    int s = 64 - __builtin_clzll((uint64_t)v) - 5;
    return (uint32_t)((s << 4) + (v >> s));
}

static inline int64_t lat_bucket_upper(uint32_t b) {
    if (b < 32) return b;
    int s = (int)(b >> 4) - 1;
    int64_t m = b - ((uint32_t)s << 4);
    return ((m + 1) << s) - 1;
}

/* p99 of a histogram of n values: the upper edge of the bucket holding the ceil(0.99 n)-th
 * smallest value, at most the maximum seen. */
static int64_t lat_p99(const uint32_t *h, uint64_t n, int64_t max) {
    if (!n || !h) return n ? max : 0;
    uint64_t rank = (99 * n + 99) / 100, cum = 0;
    for (uint32_t b = 0; b < LAT_BUCKETS; b++) {
        cum += h[b];
        if (cum >= rank) {
            int64_t up = lat_bucket_upper(b);
            return up < max ? up : max;
        }
    }
    return max;
}

/* ---- state -------------------------------------------------------------------------- */
typedef struct {
    uint8_t *buf;  /* a pool buffer, or (len > BUF_SIZE) a malloc'd super-frame */
    uint32_t len;  /* bytes in buf (with --gso: the virtio_net_hdr, then the frame) */
    uint32_t wire; /* bytes on the wire: the frame, or the segments a super-frame stands for */
    uint32_t segs; /* frames on the wire: 1, or a super-frame's segments */
    int64_t dep;
} pkt_t;

typedef struct dir {
    uint32_t link_id;
    uint8_t side;     /* 0: frames that arrived on the a-side end, 1: b-side */
    int in_ifindex, out_ifindex;
    int64_t delay_ns;
    double ns_per_byte; /* 0: unlimited rate */
    uint32_t limit;
    double loss;
    bool up;
    int64_t free_ns, last_dep;
    pkt_t *q;           /* FIFO of frames waiting for departure, power-of-two ring */
    uint32_t qmask, qhead, qtail;
    int64_t *ends;      /* serialisation ends of frames still in the drop-tail queue */
    uint32_t emask, ehead, etail;
    int heap_pos;       /* -1: not in the heap */
    uint64_t pkts, bytes, drops;
    uint64_t g_frames;  /* the guard, since the last OP_GUARD */
    int64_t g_max;
    uint32_t *g_hist;
    /* the access model (OP_ACCESS); acc / ge false: none, no work per frame */
    bool acc, ge, ge_bad;
    int64_t a_const, a_frame, a_gmin, a_gspan;
    double ge_p, ge_r, ge_lb, ge_lg;
} dir_t;

typedef struct {
    uint32_t id;
    int ifidx[2];
    dir_t *d[2]; /* the directions this worker owns (NULL: another worker's) */
} link_t;

/* u32 -> pointer, open addressing with linear probing and backward-shift deletion */
typedef struct {
    uint32_t key;
    void *val;
} hent_t;
typedef struct {
    hent_t *t;
    uint32_t mask, n;
} hmap_t;

static struct {
    const char *run_id;
    int workers, wid;
    int rxfd, txfd;
    uint8_t *ring;
    uint32_t nframes, head;
    hmap_t dirs;  /* ingress ifindex -> owned direction */
    hmap_t links; /* link id -> link */
    dir_t **heap;
    uint32_t heap_n, heap_cap;
    uint8_t **pool;
    uint32_t pool_n, pool_cap, pool_total;
    uint64_t unknown, truncated, pool_drops;
    bool gso;             /* --gso: frames carry a virtio_net_hdr; super-frames pass whole */
    uint8_t *big;         /* --gso: where a super-frame from the socket queue is read */
    uint64_t big_bytes;   /* --gso: bytes of super-frames in flight */
    uint64_t rng;
    int64_t spin_ns, spin_budget_ns, spin_cap_ns;
    double overshoot_q;   /* running p95 estimate of the timer's overshoot, ns */
    int loadavg_fd, ncpus;
    bool contended;       /* other tasks are waiting for a CPU */
    int64_t min_delay_ns; /* smallest delay of the owned directions (INT64_MAX: none) */
    uint8_t *cbuf;
    size_t clen, ccap;
    /* one sendmmsg batch */
    struct mmsghdr msgs[TX_BATCH];
    struct iovec iov[TX_BATCH];
    struct sockaddr_ll addr[TX_BATCH];
    dir_t *bdir[TX_BATCH];
    pkt_t bpkt[TX_BATCH];
    uint32_t bn;
} S;

/* ---- small helpers ------------------------------------------------------------------- */
static void logmsg(const char *level, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "delayline[%s/%d] %s %s\n", S.run_id ? S.run_id : "?", S.wid, level, line);
}

static _Noreturn void die(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    logmsg("ERROR", "%s", line);
    exit(1);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q && n) die("out of memory (%zu bytes)", n);
    return q;
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* the clock of the ring's timestamps */
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* xorshift64*: uniform in [0, 1) */
static inline double rnd(void) {
    S.rng ^= S.rng >> 12;
    S.rng ^= S.rng << 25;
    S.rng ^= S.rng >> 27;
    return (double)((S.rng * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}

static inline uint32_t rd_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int64_t rd_i64(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline double rd_f64(const uint8_t *p) { double v; memcpy(&v, p, 8); return v; }

/* ---- hash map ------------------------------------------------------------------------ */
static inline uint32_t hmix(uint32_t k) {
    k ^= k >> 16;
    k *= 0x7feb352dU;
    k ^= k >> 15;
    k *= 0x846ca68bU;
    k ^= k >> 16;
    return k;
}

static void *hget(const hmap_t *m, uint32_t key) {
    if (!m->t) return NULL;
    for (uint32_t i = hmix(key) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->t[i].val) return NULL;
        if (m->t[i].key == key) return m->t[i].val;
    }
}

static void hput(hmap_t *m, uint32_t key, void *val);

static void hgrow(hmap_t *m) {
    hent_t *old = m->t;
    uint32_t oldcap = old ? m->mask + 1 : 0, cap = oldcap ? 2 * oldcap : 64;
    m->t = calloc(cap, sizeof *m->t);
    if (!m->t) die("out of memory (hash map of %u)", cap);
    m->mask = cap - 1;
    m->n = 0;
    for (uint32_t i = 0; i < oldcap; i++)
        if (old[i].val) hput(m, old[i].key, old[i].val);
    free(old);
}

static void hput(hmap_t *m, uint32_t key, void *val) {
    if (!m->t || 2 * (m->n + 1) > m->mask + 1) hgrow(m);
    for (uint32_t i = hmix(key) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->t[i].val) {
            m->t[i].key = key;
            m->t[i].val = val;
            m->n++;
            return;
        }
        if (m->t[i].key == key) {
            m->t[i].val = val;
            return;
        }
    }
}

static void hdel(hmap_t *m, uint32_t key) {
    if (!m->t) return;
    uint32_t i = hmix(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (!m->t[i].val) return;
        if (m->t[i].key == key) break;
    }
    for (uint32_t j = i;;) { /* backward shift: keep every probe chain unbroken */
        j = (j + 1) & m->mask;
        if (!m->t[j].val) break;
        uint32_t home = hmix(m->t[j].key) & m->mask;
        bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            m->t[i] = m->t[j];
            i = j;
        }
    }
    m->t[i].val = NULL;
    m->n--;
}

/* ---- buffer pool --------------------------------------------------------------------- */
static uint8_t *buf_get(void) {
    if (!S.pool_n) {
        if (S.pool_total >= POOL_MAX_BUFS) return NULL;
        uint8_t *slab = malloc((size_t)SLAB_BUFS * BUF_SIZE);
        if (!slab) return NULL;
        if (S.pool_cap < S.pool_total + SLAB_BUFS) {
            S.pool_cap = S.pool_total + SLAB_BUFS;
            S.pool = xrealloc(S.pool, S.pool_cap * sizeof *S.pool);
        }
        for (uint32_t i = 0; i < SLAB_BUFS; i++) S.pool[S.pool_n++] = slab + (size_t)i * BUF_SIZE;
        S.pool_total += SLAB_BUFS;
    }
    return S.pool[--S.pool_n];
}

static inline void buf_put(uint8_t *b) { S.pool[S.pool_n++] = b; }

static inline void pkt_release(const pkt_t *p) {
    if (p->len > BUF_SIZE) {
        S.big_bytes -= p->len;
        free(p->buf);
    } else {
        buf_put(p->buf);
    }
}

/* ---- the departure heap: directions keyed by their head frame's departure ----------- */
static inline int64_t dkey(const dir_t *d) { return d->q[d->qhead & d->qmask].dep; }

static void heap_set(uint32_t i, dir_t *d) {
    S.heap[i] = d;
    d->heap_pos = (int)i;
}

static void sift_up(uint32_t i) {
    dir_t *d = S.heap[i];
    int64_t k = dkey(d);
    while (i) {
        uint32_t p = (i - 1) / 2;
        if (dkey(S.heap[p]) <= k) break;
        heap_set(i, S.heap[p]);
        i = p;
    }
    heap_set(i, d);
}

static void sift_down(uint32_t i) {
    dir_t *d = S.heap[i];
    int64_t k = dkey(d);
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= S.heap_n) break;
        if (c + 1 < S.heap_n && dkey(S.heap[c + 1]) < dkey(S.heap[c])) c++;
        if (dkey(S.heap[c]) >= k) break;
        heap_set(i, S.heap[c]);
        i = c;
    }
    heap_set(i, d);
}

static void heap_push(dir_t *d) {
    if (S.heap_n == S.heap_cap) {
        S.heap_cap = S.heap_cap ? 2 * S.heap_cap : 256;
        S.heap = xrealloc(S.heap, S.heap_cap * sizeof *S.heap);
    }
    heap_set(S.heap_n++, d);
    sift_up(S.heap_n - 1);
}

static void heap_remove(dir_t *d) {
    if (d->heap_pos < 0) return;
    uint32_t i = (uint32_t)d->heap_pos;
    d->heap_pos = -1;
    dir_t *last = S.heap[--S.heap_n];
    if (i == S.heap_n) return;
    heap_set(i, last);
    sift_up(i);
    sift_down((uint32_t)last->heap_pos);
}

/* ---- directions and links ------------------------------------------------------------ */
static void configure(dir_t *d, const uint8_t *rec) {
    d->delay_ns = rd_i64(rec + 4);
    double rate = rd_f64(rec + 12);
    d->ns_per_byte = rate > 0 ? 8e9 / rate : 0.0;
    d->limit = rd_u32(rec + 20);
    d->loss = rd_f64(rec + 24);
    d->up = rec[32] != 0;
}

static void set_access(dir_t *d, const uint8_t *rec) {
    d->a_const = rd_i64(rec + 5);
    d->a_frame = rd_i64(rec + 13);
    d->a_gmin = rd_i64(rec + 21);
    int64_t gmax = rd_i64(rec + 29);
    d->a_gspan = gmax > d->a_gmin ? gmax - d->a_gmin : 0;
    d->acc = d->a_const || d->a_frame || d->a_gmin || d->a_gspan;
    d->ge_p = rd_f64(rec + 37);
    d->ge_r = rd_f64(rec + 45);
    d->ge_lb = rd_f64(rec + 53);
    d->ge_lg = rd_f64(rec + 61);
    d->ge = d->ge_p > 0;
    d->ge_bad = false;
}

/* One step of the Gilbert-Elliott chain: lost by the state the frame finds, then the move
   (netem's loss_gilb_ell). */
static inline bool ge_lost(dir_t *d) {
    bool lost;
    if (d->ge_bad) {
        lost = rnd() < d->ge_lb;
        if (rnd() < d->ge_r) d->ge_bad = false;
    } else {
        lost = rnd() < d->ge_lg;
        if (rnd() < d->ge_p) d->ge_bad = true;
    }
    return lost;
}

/* When a frame ready at t may take the propagation: after its grant, at the next frame
   boundary, plus the constant. */
static inline int64_t access_ready(const dir_t *d, int64_t t) {
    t += d->a_gmin;
    if (d->a_gspan) t += (int64_t)(rnd() * (double)d->a_gspan);
    if (d->a_frame > 0) {
        int64_t r = t % d->a_frame;
        if (r) t += d->a_frame - (r < 0 ? r + d->a_frame : r);
    }
    return t + d->a_const;
}

static void dir_free(dir_t *d) {
    heap_remove(d);
    for (uint32_t i = d->qhead; i != d->qtail; i++) pkt_release(&d->q[i & d->qmask]);
    free(d->q);
    free(d->ends);
    free(d->g_hist);
    free(d);
}

static void link_remove(uint32_t id) {
    link_t *l = hget(&S.links, id);
    if (!l) return;
    for (int k = 0; k < 2; k++) {
        if (l->d[k]) {
            hdel(&S.dirs, (uint32_t)l->ifidx[k]);
            dir_free(l->d[k]);
        }
    }
    hdel(&S.links, id);
    free(l);
}

/* ---- data path ----------------------------------------------------------------------- */
/* --gso: the segments a frame stands for and their bytes on the wire. A super-frame's
 * virtio_net_hdr (linux/virtio_net.h; little-endian on the hosts this runs on) gives the
 * segment payload (gso_size) and where the transport header starts (csum_start); the
 * headers repeated in each segment are up to the end of the TCP (data offset) or UDP
 * header. An unknown type counts as one frame. */
static uint32_t gso_segments(const uint8_t *buf, uint32_t len, uint32_t *seg_hdr) {
    const struct virtio_net_hdr *v = (const void *)buf;
    uint32_t flen = len - VNET_SIZE;
    uint8_t type = v->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
    uint32_t gsz = v->gso_size, cs = v->csum_start, hl;
    const uint8_t *f = buf + VNET_SIZE;
    if (type == VIRTIO_NET_HDR_GSO_NONE || !gsz) return 1;
    if ((type == VIRTIO_NET_HDR_GSO_TCPV4 || type == VIRTIO_NET_HDR_GSO_TCPV6) && cs + 13 < flen)
        hl = cs + ((uint32_t)(f[cs + 12] >> 4) * 4);
#ifdef VIRTIO_NET_HDR_GSO_UDP_L4
    else if (type == VIRTIO_NET_HDR_GSO_UDP_L4)
        hl = cs + 8;
#endif
    else
        return 1;
    if (hl >= flen) return 1;
    *seg_hdr = hl;
    return (flen - hl + gsz - 1) / gsz;
}

static void enqueue(dir_t *d, int64_t t, const uint8_t *data, uint32_t len) {
    int64_t dep;
    uint32_t segs = 1, hl = 0, wire = len;
    if (S.gso) {
        segs = gso_segments(data, len, &hl);
        wire = len - VNET_SIZE + (segs - 1) * hl;
    }
    if (d->ns_per_byte > 0) {
        while (d->ehead != d->etail && d->ends[d->ehead & d->emask] <= t) d->ehead++;
        if (d->etail - d->ehead + segs > d->limit) { /* drop-tail, counted in frames */
            d->drops += segs;
            return;
        }
    }
    uint8_t *buf;
    if (len > BUF_SIZE) {
        buf = S.big_bytes + len <= BIG_MAX_BYTES ? malloc(len) : NULL;
        if (buf) S.big_bytes += len;
    } else {
        buf = buf_get();
    }
    if (!buf) {
        if (!S.pool_drops++)
            logmsg("WARNING", "more than %u frames in flight: dropping frames",
                   (unsigned)POOL_MAX_BUFS);
        d->drops += segs;
        return;
    }
    if (d->ns_per_byte > 0) {
        int64_t start = t > d->free_ns ? t : d->free_ns;
        /* a super-frame's segments serialise back to back; each ends in the ends ring */
        uint32_t gsz = segs > 1 ? ((const struct virtio_net_hdr *)data)->gso_size : 0;
        uint64_t sent = 0;
        int64_t end = start;
        for (uint32_t k = 0; k < segs; k++) {
            sent += segs > 1 ? (k + 1 < segs ? hl + gsz : wire - sent) : wire;
            end = start + (int64_t)((double)sent * d->ns_per_byte);
            if (d->etail - d->ehead == (d->ends ? d->emask + 1 : 0)) { /* grow the ends ring */
                uint32_t cap = d->ends ? 2 * (d->emask + 1) : 64, n = d->etail - d->ehead;
                int64_t *e = xrealloc(NULL, cap * sizeof *e);
                for (uint32_t i = 0; i < n; i++) e[i] = d->ends[(d->ehead + i) & d->emask];
                free(d->ends);
                d->ends = e;
                d->emask = cap - 1;
                d->ehead = 0;
                d->etail = n;
            }
            d->ends[d->etail++ & d->emask] = end;
        }
        d->free_ns = end;
        dep = (d->acc ? access_ready(d, end) : end) + d->delay_ns;
    } else {
        dep = (d->acc ? access_ready(d, t) : t) + d->delay_ns;
    }
    if (dep < d->last_dep) dep = d->last_dep;
    d->last_dep = dep;
    memcpy(buf, data, len);
    uint32_t n = d->qtail - d->qhead;
    if (n == (d->q ? d->qmask + 1 : 0)) { /* grow the FIFO */
        uint32_t cap = d->q ? 2 * (d->qmask + 1) : 64;
        pkt_t *q = xrealloc(NULL, cap * sizeof *q);
        for (uint32_t i = 0; i < n; i++) q[i] = d->q[(d->qhead + i) & d->qmask];
        free(d->q);
        d->q = q;
        d->qmask = cap - 1;
        d->qhead = 0;
        d->qtail = n;
    }
    d->q[d->qtail++ & d->qmask] = (pkt_t){buf, len, wire, segs, dep};
    if (n == 0) heap_push(d);
}

static inline struct tpacket2_hdr *frame(uint32_t i) {
    return (struct tpacket2_hdr *)(S.ring + (size_t)i * FRAME_SIZE);
}

static inline bool ring_ready(void) {
    return __atomic_load_n(&frame(S.head)->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER;
}

/* Take up to `max` frames from the ring and schedule them; returns how many. */
static int drain(int max) {
    int n = 0;
    while (n < max) {
        struct tpacket2_hdr *h = frame(S.head);
        uint32_t status = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (!(status & TP_STATUS_USER)) break;
        const struct sockaddr_ll *sll =
            (const void *)((uint8_t *)h + TPACKET_ALIGN(sizeof(struct tpacket2_hdr)));
        dir_t *d = hget(&S.dirs, (uint32_t)sll->sll_ifindex);
        const uint8_t *data = (const uint8_t *)h + h->tp_mac;
        uint32_t len = h->tp_snaplen, full = h->tp_len, cap = BUF_SIZE;
        if (S.gso) { /* the kernel put the virtio_net_hdr just before the frame */
            data -= VNET_SIZE;
            len += VNET_SIZE;
            full += VNET_SIZE;
            cap = BIG_SIZE;
            if (status & TP_STATUS_COPY) {
                /* larger than a ring slot (a super-frame): the ring has its head, the
                 * socket's queue (PACKET_COPY_THRESH) the whole, in the same order */
                ssize_t r = recv(S.rxfd, S.big, BIG_SIZE, MSG_DONTWAIT | MSG_TRUNC);
                if (r >= (ssize_t)VNET_SIZE && r <= (ssize_t)BIG_SIZE) {
                    data = S.big;
                    len = full = (uint32_t)r;
                }
            }
        }
        if (!d) {
            S.unknown++;
        } else if (len < full || len > cap) {
            S.truncated++;
            d->drops++;
        } else if (!d->up || (d->ge && ge_lost(d)) || (d->loss > 0 && rnd() < d->loss)) {
            uint32_t hl = 0; /* a super-frame is lost whole: all its segments */
            d->drops += S.gso ? gso_segments(data, len, &hl) : 1;
        } else {
            enqueue(d, (int64_t)h->tp_sec * 1000000000LL + h->tp_nsec, data, len);
        }
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        S.head = S.head + 1 < S.nframes ? S.head + 1 : 0;
        n++;
    }
    return n;
}

static void flush(void) {
    uint32_t n = S.bn;
    if (!n) return;
    bool failed[TX_BATCH];
    memset(failed, 0, n);
    int64_t t0 = now_ns();
    for (uint32_t off = 0; off < n;) {
        int r = sendmmsg(S.txfd, S.msgs + off, n - off, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            failed[off++] = true; /* this frame cannot go (e.g. interface down): a drop */
            continue;
        }
        off += (uint32_t)r;
    }
    int64_t t1 = now_ns(), span = t1 - t0;
    for (uint32_t k = 0; k < n; k++) {
        dir_t *d = S.bdir[k];
        pkt_t *p = &S.bpkt[k];
        if (failed[k]) {
            d->drops += p->segs;
        } else {
            d->pkts += p->segs;
            d->bytes += p->wire;
            int64_t lat = t0 + span * (int64_t)k / (int64_t)n - p->dep;
            if (lat < 0) lat = 0;
            d->g_frames += p->segs;
            if (lat > d->g_max) d->g_max = lat;
            if (!d->g_hist) d->g_hist = calloc(LAT_BUCKETS, sizeof *d->g_hist);
            if (d->g_hist) d->g_hist[lat_bucket(lat)] += p->segs;
        }
        pkt_release(p);
    }
    S.bn = 0;
}

/* Send every frame due at `now` (and those that fall due while sending). */
static int send_due(int64_t now) {
    int sent = 0;
    while (S.heap_n && dkey(S.heap[0]) <= now) {
        dir_t *d = S.heap[0];
        pkt_t p = d->q[d->qhead++ & d->qmask];
        uint32_t k = S.bn++;
        S.bdir[k] = d;
        S.bpkt[k] = p;
        S.iov[k].iov_base = p.buf;
        S.iov[k].iov_len = p.len;
        S.addr[k].sll_ifindex = d->out_ifindex;
        if (d->qhead == d->qtail)
            heap_remove(d);
        else
            sift_down(0);
        sent++;
        if (S.bn == TX_BATCH) {
            flush();
            now = now_ns();
        }
    }
    flush();
    return sent;
}

/* ---- control ------------------------------------------------------------------------- */
static void write_all(const void *data, size_t n) {
    const uint8_t *p = data;
    while (n) {
        ssize_t w = write(1, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("cannot write to the control channel: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
    }
}

static void reply(uint8_t status, const void *payload, uint32_t n) {
    uint8_t hdr[HDR_SIZE];
    hdr[0] = status;
    memcpy(hdr + 1, &n, 4);
    if (n <= 4096) { /* one write for small replies */
        uint8_t small[HDR_SIZE + 4096];
        memcpy(small, hdr, HDR_SIZE);
        if (n) memcpy(small + HDR_SIZE, payload, n);
        write_all(small, HDR_SIZE + n);
    } else {
        write_all(hdr, HDR_SIZE);
        write_all(payload, n);
    }
}

/* "[1, 2, 3] (3 in all)" as Python prints a list of the first ten ids */
static void id_list(char *out, size_t cap, const uint32_t *ids, uint32_t n) {
    size_t o = (size_t)snprintf(out, cap, "[");
    for (uint32_t i = 0; i < n && i < 10 && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, i ? ", %u" : "%u", ids[i]);
    if (o < cap) snprintf(out + o, cap - o, "] (%u in all)", n);
}

static void op_add(const uint8_t *body, uint32_t n) {
    uint32_t *missing = NULL, nmiss = 0;
    for (uint32_t r = 0; r < n; r++) {
        const uint8_t *rec = body + (size_t)r * LINK_REC_SIZE;
        uint32_t id = rd_u32(rec);
        char names[2][IF_NAMESIZE + 16];
        snprintf(names[0], sizeof names[0], "dl%ua", id);
        snprintf(names[1], sizeof names[1], "dl%ub", id);
        int idx[2] = {(int)if_nametoindex(names[0]), (int)if_nametoindex(names[1])};
        if (!idx[0] || !idx[1]) {
            missing = xrealloc(missing, (nmiss + 1) * sizeof *missing);
            missing[nmiss++] = id;
            continue;
        }
        link_remove(id);
        link_t *l = calloc(1, sizeof *l);
        if (!l) die("out of memory");
        l->id = id;
        for (int k = 0; k < 2; k++) {
            l->ifidx[k] = idx[k];
            if (idx[k] % S.workers != S.wid) continue;
            dir_t *d = calloc(1, sizeof *d);
            if (!d) die("out of memory");
            d->link_id = id;
            d->side = (uint8_t)k;
            d->in_ifindex = idx[k];
            d->out_ifindex = idx[1 - k];
            d->heap_pos = -1;
            configure(d, rec);
            l->d[k] = d;
            hput(&S.dirs, (uint32_t)idx[k], d);
        }
        hput(&S.links, id, l);
    }
    if (nmiss) {
        char ids[256], msg[512];
        id_list(ids, sizeof ids, missing, nmiss);
        int len = snprintf(msg, sizeof msg,
                           "no delay-line interfaces for link ids %s; "
                           "create them before adding the links", ids);
        free(missing);
        reply(ST_ERROR, msg, (uint32_t)len);
        return;
    }
    reply(ST_OK, NULL, 0);
}

/* The reply to an operation on links: OK, or an error naming the ids no link has (frees
 * them). */
static void reply_unknown(uint32_t *unknown, uint32_t nunk, const char *what) {
    if (nunk) {
        char ids[256], msg[512];
        id_list(ids, sizeof ids, unknown, nunk);
        int len = snprintf(msg, sizeof msg, "%s of unknown link ids %s", what, ids);
        free(unknown);
        reply(ST_ERROR, msg, (uint32_t)len);
        return;
    }
    reply(ST_OK, NULL, 0);
}

static void op_update(const uint8_t *body, uint32_t n) {
    uint32_t *unknown = NULL, nunk = 0;
    for (uint32_t r = 0; r < n; r++) {
        const uint8_t *rec = body + (size_t)r * LINK_REC_SIZE;
        uint32_t id = rd_u32(rec);
        link_t *l = hget(&S.links, id);
        if (!l) {
            unknown = xrealloc(unknown, (nunk + 1) * sizeof *unknown);
            unknown[nunk++] = id;
            continue;
        }
        for (int k = 0; k < 2; k++)
            if (l->d[k]) configure(l->d[k], rec);
    }
    reply_unknown(unknown, nunk, "update");
}

static void op_access(const uint8_t *body, uint32_t n) {
    uint32_t *unknown = NULL, nunk = 0;
    for (uint32_t r = 0; r < n; r++) {
        const uint8_t *rec = body + (size_t)r * ACCESS_REC_SIZE;
        uint32_t id = rd_u32(rec);
        link_t *l = hget(&S.links, id);
        if (!l) {
            unknown = xrealloc(unknown, (nunk + 1) * sizeof *unknown);
            unknown[nunk++] = id;
            continue;
        }
        uint8_t side = rec[4];
        if (side < 2 && l->d[side]) set_access(l->d[side], rec);
    }
    reply_unknown(unknown, nunk, "access model");
}

static void op_counters(void) {
    uint32_t n = S.links.n, o = 0;
    uint8_t *out = xrealloc(NULL, (size_t)n * CNT_REC_SIZE + 1);
    for (uint32_t i = 0; S.links.t && i <= S.links.mask; i++) {
        link_t *l = S.links.t[i].val;
        if (!l) continue;
        uint64_t c[3] = {0, 0, 0};
        for (int k = 0; k < 2; k++) {
            if (!l->d[k]) continue;
            c[0] += l->d[k]->pkts;
            c[1] += l->d[k]->bytes;
            c[2] += l->d[k]->drops;
        }
        memcpy(out + o, &l->id, 4);
        memcpy(out + o + 4, c, 24);
        o += CNT_REC_SIZE;
    }
    reply(ST_OK, out, o);
    free(out);
}

static void guard_rec(uint8_t *p, uint32_t id, uint8_t dir, uint64_t frames, int64_t p99,
                      int64_t max, uint32_t queue) {
    memcpy(p, &id, 4);
    p[4] = dir;
    memcpy(p + 5, &frames, 8);
    memcpy(p + 13, &p99, 8);
    memcpy(p + 21, &max, 8);
    memcpy(p + 29, &queue, 4);
}

/* Frames of d's drop-tail queue still there at now: serialisation ends later than now
 * (the ends ring is in ascending order; read only, the data path trims it itself). */
static uint32_t queue_backlog(const dir_t *d, int64_t now) {
    uint32_t n = 0;
    for (uint32_t i = d->etail; i != d->ehead && d->ends[(i - 1) & d->emask] > now; i--) n++;
    return n;
}

static void op_guard(void) {
    uint32_t cap = 2 * S.links.n + 1, o = 0;
    uint8_t *out = xrealloc(NULL, (size_t)cap * GUARD_REC_SIZE);
    uint32_t all[LAT_BUCKETS];
    memset(all, 0, sizeof all);
    uint64_t all_n = 0;
    int64_t all_max = 0, now = now_ns();
    for (uint32_t i = 0; S.links.t && i <= S.links.mask; i++) {
        link_t *l = S.links.t[i].val;
        if (!l) continue;
        for (int k = 0; k < 2; k++) {
            dir_t *d = l->d[k];
            if (!d) continue;
            uint32_t queue = d->ends ? queue_backlog(d, now) : 0;
            if (!d->g_frames && !queue) continue;
            guard_rec(out + o, l->id, (uint8_t)k, d->g_frames,
                      lat_p99(d->g_hist, d->g_frames, d->g_max), d->g_max, queue);
            o += GUARD_REC_SIZE;
            if (d->g_hist) {
                for (uint32_t b = 0; b < LAT_BUCKETS; b++) all[b] += d->g_hist[b];
                memset(d->g_hist, 0, LAT_BUCKETS * sizeof *d->g_hist);
            }
            all_n += d->g_frames;
            if (d->g_max > all_max) all_max = d->g_max;
            d->g_frames = 0;
            d->g_max = 0;
        }
    }
    struct tpacket_stats st = {0, 0};
    socklen_t sl = sizeof st;
    if (getsockopt(S.rxfd, SOL_PACKET, PACKET_STATISTICS, &st, &sl) < 0)
        logmsg("WARNING", "PACKET_STATISTICS: %s", strerror(errno));
    guard_rec(out + o, WORKER_LINK_ID, (uint8_t)S.wid, st.tp_drops,
              lat_p99(all, all_n, all_max), all_max, 0);
    o += GUARD_REC_SIZE;
    reply(ST_OK, out, o);
    free(out);
}

static void update_min_delay(void) {
    int64_t m = INT64_MAX;
    for (uint32_t i = 0; S.dirs.t && i <= S.dirs.mask; i++) {
        const dir_t *d = S.dirs.t[i].val;
        if (d && d->delay_ns < m) m = d->delay_ns;
    }
    S.min_delay_ns = m;
}

static size_t rec_size(uint8_t op) {
    switch (op) {
    case OP_ADD:
    case OP_UPDATE: return LINK_REC_SIZE;
    case OP_REMOVE: return ID_REC_SIZE;
    case OP_ACCESS: return ACCESS_REC_SIZE;
    default: return 0;
    }
}

/* Read and run pending control messages; false on EOF or OP_QUIT. */
static bool control(void) {
    for (;;) {
        if (S.ccap - S.clen < 65536) {
            S.ccap = S.ccap ? 2 * S.ccap : 1 << 20;
            S.cbuf = xrealloc(S.cbuf, S.ccap);
        }
        ssize_t r = read(0, S.cbuf + S.clen, S.ccap - S.clen);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            die("cannot read the control channel: %s", strerror(errno));
        }
        if (r == 0) return false;
        S.clen += (size_t)r;
        if (S.clen > (64u << 20)) break; /* handle what is there before reading more */
    }
    size_t pos = 0;
    while (S.clen - pos >= HDR_SIZE) {
        uint8_t op = S.cbuf[pos];
        uint32_t n = rd_u32(S.cbuf + pos + 1);
        size_t size = rec_size(op) * n;
        if (S.clen - pos < HDR_SIZE + size) break;
        const uint8_t *body = S.cbuf + pos + HDR_SIZE;
        pos += HDR_SIZE + size;
        switch (op) {
        case OP_QUIT: reply(ST_OK, NULL, 0); return false;
        case OP_ADD: op_add(body, n); break;
        case OP_UPDATE: op_update(body, n); break;
        case OP_REMOVE:
            for (uint32_t i = 0; i < n; i++) link_remove(rd_u32(body + 4 * (size_t)i));
            reply(ST_OK, NULL, 0);
            break;
        case OP_COUNTERS: op_counters(); break;
        case OP_GUARD: op_guard(); break;
        case OP_ACCESS: op_access(body, n); break;
        default: {
            char msg[128];
            int len = snprintf(msg, sizeof msg,
                               "unknown control operation %u; valid: (1, 2, 3, 4, 5, 6, 7)", op);
            reply(ST_ERROR, msg, (uint32_t)len);
        }
        }
    }
    memmove(S.cbuf, S.cbuf + pos, S.clen - pos);
    S.clen -= pos;
    if (pos) update_min_delay();
    return true;
}

/* ---- setup --------------------------------------------------------------------------- */
static void open_sockets(void) {
    /* protocol 0: receives nothing until bound, so no frame of another worker slips in
     * before the filter and the ring are in place */
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) die("packet socket: %s (needs CAP_NET_RAW)", strerror(errno));
    int one = 1;
    if (setsockopt(s, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0)
        die("PACKET_IGNORE_OUTGOING: %s", strerror(errno));
    if (setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0) /* stamp at netif_rx */
        die("SO_TIMESTAMPNS: %s", strerror(errno));
    if (S.workers > 1) {
        struct sock_filter prog[] = {
            {BPF_LD | BPF_W | BPF_ABS, 0, 0, (uint32_t)(SKF_AD_OFF + SKF_AD_IFINDEX)},
            {BPF_ALU | BPF_MOD | BPF_K, 0, 0, (uint32_t)S.workers},
            {BPF_JMP | BPF_JEQ | BPF_K, 0, 1, (uint32_t)S.wid},
            {BPF_RET | BPF_K, 0, 0, 0x40000},
            {BPF_RET | BPF_K, 0, 0, 0},
        };
        struct sock_fprog fp = {sizeof prog / sizeof prog[0], prog};
        if (setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp) < 0)
            die("SO_ATTACH_FILTER: %s", strerror(errno));
    }
    if (S.gso) {
        /* frames with a virtio_net_hdr (set before the ring); larger than a slot: whole to
         * the socket's queue as well, which must hold a few 64 KiB super-frames */
        if (setsockopt(s, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0)
            die("PACKET_VNET_HDR: %s", strerror(errno));
        if (setsockopt(s, SOL_PACKET, PACKET_COPY_THRESH, &one, sizeof one) < 0)
            die("PACKET_COPY_THRESH: %s", strerror(errno));
        int rcvbuf = 32 << 20;
        if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
            setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        S.big = xrealloc(NULL, BIG_SIZE);
    }
    int ver = TPACKET_V2;
    if (setsockopt(s, SOL_PACKET, PACKET_VERSION, &ver, sizeof ver) < 0)
        die("PACKET_VERSION: %s", strerror(errno));
    struct tpacket_req req = {BLOCK_SIZE, BLOCK_NR, FRAME_SIZE, BLOCK_SIZE / FRAME_SIZE * BLOCK_NR};
    if (setsockopt(s, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0)
        die("PACKET_RX_RING: %s", strerror(errno));
    S.nframes = req.tp_frame_nr;
    S.ring = mmap(NULL, (size_t)BLOCK_SIZE * BLOCK_NR, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
    if (S.ring == MAP_FAILED) die("mmap of the rx ring: %s", strerror(errno));
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL)};
    if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind: %s", strerror(errno));
    S.rxfd = s;

    int t = socket(AF_PACKET, SOCK_RAW, 0);
    if (t < 0) die("packet socket: %s", strerror(errno));
    if (setsockopt(t, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
        logmsg("WARNING", "PACKET_QDISC_BYPASS: %s", strerror(errno));
    if (S.gso && setsockopt(t, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0)
        die("PACKET_VNET_HDR (send): %s", strerror(errno));
    int sndbuf = 16 << 20;
    if (setsockopt(t, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
        setsockopt(t, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    S.txfd = t;
    for (int k = 0; k < TX_BATCH; k++) {
        S.addr[k].sll_family = AF_PACKET;
        S.msgs[k].msg_hdr.msg_name = &S.addr[k];
        S.msgs[k].msg_hdr.msg_namelen = sizeof S.addr[k];
        S.msgs[k].msg_hdr.msg_iov = &S.iov[k];
        S.msgs[k].msg_hdr.msg_iovlen = 1;
    }
}

static void write_proc(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (write(fd, value, strlen(value)) < 0) { /* best effort, as in the Python worker */
    }
    close(fd);
}

/* Keep the CPUs out of idle states that are slow to leave while this worker runs: a CPU
 * latency QoS request of 0 us through /dev/cpu_dma_latency, which holds while the file is
 * open, so it ends with this process (the kernel's admin guide, pm/cpuidle.rst, "Power
 * Management Quality of Service for CPUs"). Why (a KVM guest's halted vCPUs woke the
 * worker milliseconds late), what it measured and what it costs: meshemu/linux/pmqos.py,
 * which the Python worker and the netem shaper use. MESHEMU_CPU_LATENCY=off skips it. */
static int S_cpu_latency_fd = -1;
static void hold_cpu_latency(void) {
    const char *env = getenv("MESHEMU_CPU_LATENCY");
    if (env && strcmp(env, "off") == 0) return;
    int fd = open("/dev/cpu_dma_latency", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return; /* no PM QoS here: nothing to hold */
    int32_t zero = 0;
    if (write(fd, &zero, sizeof zero) != (ssize_t)sizeof zero) {
        close(fd);
        return;
    }
    S_cpu_latency_fd = fd; /* kept open until the process ends */
}

/* Real-time scheduling, fine timer slack, no IPv6 in this namespace, the CPU latency
 * request; returns whether real-time scheduling is on. */
static bool prepare_process(void) {
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    hold_cpu_latency();
    bool realtime = true;
    struct sched_param sp = {.sched_priority = RT_PRIORITY};
    if (sched_setscheduler(0, SCHED_FIFO, &sp) < 0) {
        realtime = false;
        logmsg("WARNING", "cannot use real-time scheduling (%s); delays may be late under load",
               strerror(errno));
        if (setpriority(PRIO_PROCESS, 0, -10) < 0) { /* best effort */
        }
    }
    /* a' and b' carry no addresses: keep the kernel from sending IPv6 DAD/RS/MLD on them */
    write_proc("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    write_proc("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
    return realtime;
}

/* Is no CPU idle (spinning would take one from a task that wants it)? /proc/loadavg's 4th
 * field is runnable/total tasks (this one included). */
static bool others_waiting(void) {
    if (S.loadavg_fd < 0) return true;
    char buf[128];
    ssize_t n = pread(S.loadavg_fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return true;
    buf[n] = '\0';
    const char *p = buf;
    for (int field = 0; field < 3 && p; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    return !p || atoi(p) > S.ncpus - CONTENDED_SLACK;
}

/* Feed the overshoot of one timed wake-up to the p95 estimator (a stochastic quantile:
 * up by 0.95 step when above, down by 0.05 step when below). */
static void note_overshoot(int64_t over) {
    const double step = 2000.0;
    S.overshoot_q += over > S.overshoot_q ? 0.95 * step : -0.05 * step;
    if (S.overshoot_q < 0) S.overshoot_q = 0;
    if (S.overshoot_q > SPIN_NS) S.overshoot_q = SPIN_NS;
}

static inline int64_t spin_lead(void) {
    int64_t lead = (int64_t)S.overshoot_q + LEAD_MARGIN_NS;
    return lead < SPIN_MIN_NS ? SPIN_MIN_NS : lead > S.spin_ns ? S.spin_ns : lead;
}

/* ---- main loop ----------------------------------------------------------------------- */
static void run(void) {
    reply(ST_OK, "ready", 5);
    struct pollfd fds[2] = {{.fd = S.rxfd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    int64_t window_start = now_ns(), last_ctrl = window_start;
    int64_t spun = 0, spun_contended = 0; /* spinning in this window: all, while others wait */
    int64_t watch_from = 0; /* the ring need not be watched before this time */
    int64_t last_rx = 0;    /* when frames were last taken from the ring */
    for (;;) {
        int got = drain(RX_BATCH);
        int64_t now = now_ns();
        if (got) last_rx = now;
        send_due(now);
        if (now - last_ctrl >= CTRL_CHECK_NS) { /* busy: never starve the control channel */
            last_ctrl = now;
            S.contended = others_waiting();
            if (!control()) return;
        }
        if (ring_ready()) continue;
        /* the ring is empty at `now`: what arrives from now on departs at now + delay or
         * later (LOOKAHEAD_MARGIN_NS covers frames stamped just before now but not yet
         * in the ring) */
        int64_t ahead = S.min_delay_ns < LOOKAHEAD_MAX_NS ? S.min_delay_ns : LOOKAHEAD_MAX_NS;
        bool lookahead = S.min_delay_ns >= LOOKAHEAD_MIN_NS && now - last_rx < LOOKAHEAD_IDLE_NS;
        if (lookahead) watch_from = now + ahead - LOOKAHEAD_MARGIN_NS;
        if (now - window_start >= SPIN_WINDOW_NS) {
            window_start = now;
            spun = spun_contended = 0;
        }
        int64_t wake = INT64_MAX; /* when to look again (absolute; INT64_MAX: no timer) */
        bool timed_departure = false;
        if (S.heap_n) {
            int64_t dep = dkey(S.heap[0]), wait = dep - now, lead = spin_lead();
            bool may_spin = spun < S.spin_cap_ns && spun_contended < S.spin_budget_ns;
            if (wait <= 0) continue;
            if (wait <= lead && may_spin) {
                /* the next departure is close: spin, but pick up frames meanwhile */
                int64_t t = now;
                while (t < dep && !ring_ready()) {
                    cpu_relax();
                    t = now_ns();
                }
                spun += t - now;
                if (S.contended) spun_contended += t - now;
                continue;
            }
            wake = may_spin ? dep - lead : dep;
            timed_departure = true;
        }
        if (lookahead && watch_from < wake) {
            wake = watch_from;
            timed_departure = false;
        }
        int64_t timeout = wake == INT64_MAX ? -1 : wake - now;
        if (wake != INT64_MAX && timeout < 0) timeout = 0;
        fds[0].fd = lookahead ? -1 : S.rxfd; /* unwatched: arrivals wake nobody */
        struct timespec ts = {timeout / 1000000000LL, timeout % 1000000000LL};
        int r = ppoll(fds, 2, timeout < 0 ? NULL : &ts, NULL);
        if (r < 0 && errno != EINTR) die("ppoll: %s", strerror(errno));
        if (r == 0 && timeout > 0) {
            int64_t over = now_ns() - wake;
            if (timed_departure || over < SPIN_NS) note_overshoot(over);
        }
        if (r > 0 && fds[1].revents) {
            last_ctrl = now_ns();
            if (!control()) return;
        }
    }
}

static _Noreturn void usage(const char *prog, const char *err) {
    FILE *f = err ? stderr : stdout;
    fprintf(f,
            "usage: %s [-h] --run-id RUN_ID [--workers WORKERS] [--worker WORKER] [--gso]\n",
            prog);
    if (err) {
        fprintf(f, "%s: error: %s\n", prog, err);
        exit(2);
    }
    fprintf(f, "\nmeshemu userspace delay line, compiled (started by the userspace shaper; "
               "not meant to be run by hand)\n");
    exit(0);
}

static int int_arg(const char *prog, const char *name, const char *v) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < INT_MIN || x > INT_MAX) {
        char msg[256];
        snprintf(msg, sizeof msg, "argument %s: invalid int value: '%s'", name, v);
        usage(prog, msg);
    }
    return (int)x;
}

#ifdef DLC_LATENESS_SELFTEST
/* Built only by the unit tests (tests/unit/test_delayline_guard.py) to check that this
 * histogram agrees with meshemu.live.delayline.lateness_bucket / lateness_p99: reads
 * latenesses (ns, one a line) and prints "bucket upper" for each, then "p99 max". */
int main(void) {
    static uint32_t h[LAT_BUCKETS];
    long long v;
    uint64_t n = 0;
    int64_t max = 0;
    while (scanf("%lld", &v) == 1) {
        int64_t lat = v < 0 ? 0 : v;
        uint32_t b = lat_bucket(lat);
        printf("%u %lld\n", b, (long long)lat_bucket_upper(b));
        h[b]++;
        n++;
        if (lat > max) max = lat;
    }
    printf("%lld %lld\n", (long long)lat_p99(h, n, max), (long long)max);
    return 0;
}
#else
int main(int argc, char **argv) {
    const char *prog = "meshemu-delayline";
    S.workers = 1;
    S.wid = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        const char *names[] = {"--run-id", "--workers", "--worker"};
        int which = -1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) usage(prog, NULL);
        if (!strcmp(a, "--gso")) {
            S.gso = true;
            continue;
        }
        for (int k = 0; k < 3; k++) {
            size_t n = strlen(names[k]);
            if (!strncmp(a, names[k], n) && (a[n] == '\0' || a[n] == '=')) {
                which = k;
                v = a[n] == '=' ? a + n + 1 : NULL;
            }
        }
        if (which < 0) {
            char msg[256];
            snprintf(msg, sizeof msg, "unrecognized arguments: %s", a);
            usage(prog, msg);
        }
        if (!v) {
            if (i + 1 >= argc) {
                char msg[128];
                snprintf(msg, sizeof msg, "argument %s: expected one argument", names[which]);
                usage(prog, msg);
            }
            v = argv[++i];
        }
        if (which == 0) S.run_id = v;
        else if (which == 1) S.workers = int_arg(prog, "--workers", v);
        else S.wid = int_arg(prog, "--worker", v);
    }
    if (!S.run_id) usage(prog, "the following arguments are required: --run-id");
    if (S.workers < 1) usage(prog, "--workers must be at least 1");
    if (S.wid < 0 || S.wid >= S.workers) {
        char msg[128];
        snprintf(msg, sizeof msg, "--worker %d not in 0..%d", S.wid, S.workers - 1);
        usage(prog, msg);
    }
    /* Ctrl-C and a closed terminal reach the whole process group; the shaper that started
     * this process tears it down (QUIT, or EOF on stdin), so those signals are not for it. */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    if (getrandom(&S.rng, sizeof S.rng, 0) != sizeof S.rng || !S.rng)
        S.rng = (uint64_t)now_ns() | 1;
    bool realtime = prepare_process();
    S.spin_ns = SPIN_NS;
    S.overshoot_q = SPIN_NS - LEAD_MARGIN_NS; /* start cautious: the full SPIN_NS lead */
    S.min_delay_ns = INT64_MAX;
    /* without real-time scheduling there is no RT throttling to fear: no budget needed */
    S.spin_budget_ns = realtime ? (int64_t)(SPIN_BUDGET * SPIN_WINDOW_NS) : SPIN_WINDOW_NS;
    S.spin_cap_ns = realtime ? (int64_t)(SPIN_CAP * SPIN_WINDOW_NS) : SPIN_WINDOW_NS;
    S.ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    S.loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    S.contended = true;
    open_sockets();
    int fl = fcntl(0, F_GETFL);
    if (fl < 0 || fcntl(0, F_SETFL, fl | O_NONBLOCK) < 0)
        die("stdin: %s", strerror(errno));
    run();
    return 0;
}
#endif
