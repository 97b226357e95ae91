static __always_inline struct event *event_start(u64 id, u32 uid, u16 hook, u8 record, u8 direction, u32 gen) {
    u32 cpu = bpf_get_smp_processor_id();
    struct event *ev = scratch.lookup(&cpu);
    if (!ev) return 0;
    ev->h.ts = bpf_ktime_get_ns();
    ev->h.pid = id >> 32;
    ev->h.tid = (u32)id;
    ev->h.uid = uid;
    ev->h.hook = hook;
    ev->h.record = record;
    ev->h.direction = direction;
    ev->h.flags = 0;
    ev->h.gen = gen;
    ev->h.fd = -1;
    ev->h.session = 0;
    ev->h.ret = 0;
    ev->h.len = 0;
    ev->h.cap = 0;
    __builtin_memset(&ev->h.conn, 0, sizeof(ev->h.conn));
    bpf_get_current_comm(&ev->h.comm, sizeof(ev->h.comm));
    ev->h.cgroup = bpf_get_current_cgroup_id();
    return ev;
}

/* One buffer of gathered I/O as NSPR's PRIOVec lays it out (char *iov_base; int iov_len). */
struct ecap_iovec { u64 base; s32 len; s32 _pad; };
#define IOV_RECORDED 8      /* buffers recorded per call; the rest are reported truncated */

/* `limit`: the generation's max_bytes (at most MAX_BYTES). */
static __always_inline void read_bytes(struct event *ev, const void *src, s64 len, u32 limit) {
    if (len < 0) len = 0;
    ev->h.len = len;
    u64 cap = len;
    if (cap > limit) {
        cap = limit;
        ev->h.flags |= FLAG_TRUNCATED;
    }
    asm volatile("" : "+r"(cap));
    if (cap > MAX_BYTES) cap = MAX_BYTES;   /* the bound the verifier checks */
    asm volatile("" : "+r"(cap));
    if (cap > 0 && bpf_probe_read_user(ev->payload, cap, src) == 0)
        ev->h.cap = cap;
}

static __always_inline void read_string(struct event *ev, const void *src, u32 limit) {
    u64 size = limit;
    asm volatile("" : "+r"(size));
    if (size > MAX_BYTES) size = MAX_BYTES;
    if (size < 1) size = 1;
    asm volatile("" : "+r"(size));
    long n = bpf_probe_read_user_str(ev->payload, size, src);
    if (n <= 0) return;
    ev->h.cap = n - 1;   /* without the NUL */
    ev->h.len = n - 1;
    if (n == size) ev->h.flags |= FLAG_TRUNCATED;
}

static __always_inline void event_submit(struct event *ev) {
    u32 tgid = ev->h.pid;
    u64 zero = 0;
    u64 *seq = ecap_seqs.lookup_or_try_init(&tgid, &zero);
    ev->h.seq = seq ? __sync_fetch_and_add(seq, 1) : 0;
    u64 size = HEADER_SIZE + (u64)ev->h.cap;
    if (size > sizeof(struct event)) size = sizeof(struct event);
    asm volatile("" : "+r"(size));   /* keep the clamped value in the register the helper gets */
    /* The kernel's adaptive wakeup (flags 0): the reader is woken only for a record written to a
     * ring it had read to the end. A busy reader drains on a short timer (express.py), so a busy
     * target costs one wakeup per batch, not per record; an idle one sleeps until a record comes. */
    if (events.ringbuf_output(ev, size, 0) != 0) count_loss(LOSS_RINGBUF);
}

/* (Here, not in shared.h: bcc rewrites table calls only in the text it is given, not in headers.)
 * A probe saw connection c in the current process: record it as the target's, once. An IPv4-mapped
 * IPv6 socket's packets are IPv4 on the wire: keyed as IPv4. */
static __always_inline void flow_claim(const struct conn_t *c, u64 id, u16 target) {
    u32 zero = 0;
    u32 *on = ecap_packets_on.lookup(&zero);
    if (!on || !*on) return;        /* no packet capture: one array lookup per record, nothing more */
    u32 l[4], r[4];
    __builtin_memcpy(l, c->laddr, 16);
    __builtin_memcpy(r, c->raddr, 16);
    u16 family = c->family;
    if (family == 10 && (l[0] | l[1] | r[0] | r[1]) == 0 && l[2] == bpf_htonl(0xffff) && r[2] == bpf_htonl(0xffff)) {
        family = 2;
        l[0] = l[3]; r[0] = r[3];
        l[1] = l[2] = l[3] = 0;
        r[1] = r[2] = r[3] = 0;
    }
    struct flow_key k = {};
    flow_key_of(&k, family, (const u8 *)l, c->lport, (const u8 *)r, c->rport);
    if (ecap_flow_owner.lookup(&k)) return;
    struct flow_owner o = {.tgid = id >> 32, .target = target};
    bpf_get_current_comm(&o.comm, sizeof(o.comm));
    ecap_flow_owner.update(&k, &o);
}
