/* ecapture generated program: profile nginx-tls, target web
 * 6 hook(s); max_bytes bound 65536 (each filter configuration sets its own). */
#include <uapi/linux/ptrace.h>
#include "shared.h"

/* ECAP_TARGET (this target's number) is defined by the line render.prelude() puts before this
 * text. The programs are not attached: the target's trampolines (trampoline.c.j2) tail-call
 * the installed program. */

#define MAX_BYTES 65536
#define HEADER_SIZE sizeof(struct event_header)

struct event {
    struct event_header h;
    u8 payload[MAX_BYTES];
};

BPF_RINGBUF_OUTPUT(events, 2048);
BPF_ARRAY(scratch, struct event, 4);
BPF_PERCPU_ARRAY(lost, u64, LOSS_SLOTS);

static __always_inline void count_loss(u32 slot) {
    u64 *n = lost.lookup(&slot);
    if (n) *n += 1;
}

/* Filter configuration (orchestrator/reconcile/express.py): the uid, comm, cgroup and port filters
 * and max_bytes are read from these maps, so a filter edit switches generation with a few map
 * writes instead of a compile (MAX_BYTES above is the bound, the schema maximum). Two
 * configurations; filter_gate names the live one. Each call is judged, and its record stamped,
 * by exactly one generation: the one whose configuration was live when it was entered (a
 * return probe finds it in the stash: see stash_val in shared.h). */
struct filter_conf { u32 slot; u32 gen; u8 uids; u8 comm; u8 ports; u8 cgroups; u32 max_bytes; };
struct uid_key { u32 slot; u32 uid; };
struct comm_key { u32 slot; char comm[16]; };
struct port_key { u32 slot; u32 port; };
struct cgroup_key { u32 slot; u32 _pad; u64 id; };
BPF_ARRAY(filter_gate, u32, 1);
BPF_ARRAY(filter_conf, struct filter_conf, 2);
BPF_HASH(filter_uids, struct uid_key, u8, 128);
BPF_HASH(filter_comms, struct comm_key, u8, 128);
BPF_HASH(filter_ports, struct port_key, u8, 256);
BPF_HASH(filter_cgroups, struct cgroup_key, u8, 128);

/* cgroup v2 levels looked at: the task's cgroup and its ancestors up to this depth (a deeper
 * selected cgroup cannot be named by a profile: the schema bounds a path's depth to it). */
#define CGROUP_LEVELS 32

/* Is the current task in a selected cgroup or below one? Its ancestors are asked level by level
 * from the root down (bpf_get_current_ancestor_cgroup_id: 0 past the task's own level), each
 * looked up by id: the cost follows the task's depth, not the number of selected cgroups, and
 * an id (the cgroup directory's inode number) is a plain number userspace writes to the map. */
static __always_inline int cgroup_wanted(struct filter_conf *fc) {
    struct cgroup_key gk = {.slot = fc->slot};
    for (int level = 1; level <= CGROUP_LEVELS; level++) {
        gk.id = bpf_get_current_ancestor_cgroup_id(level);
        if (gk.id == 0) return 0;
        if (filter_cgroups.lookup(&gk)) return 1;
    }
    return 0;
}

static __always_inline struct filter_conf *live_filters(void) {
    u32 zero = 0;
    u32 *gate = filter_gate.lookup(&zero);
    if (!gate) return 0;
    u32 slot = *gate & 1;
    return filter_conf.lookup(&slot);
}

/* Process-level filters, cheapest first. Returns 1 when the current process is wanted. */
static __always_inline int process_wanted(u32 tgid, struct filter_conf *fc) {
    if (fc->uids) {
        struct uid_key uk = {.slot = fc->slot, .uid = (u32)bpf_get_current_uid_gid()};
        if (!filter_uids.lookup(&uk)) return 0;
    }
    if (fc->comm) {
        struct comm_key ck = {.slot = fc->slot};
        bpf_get_current_comm(&ck.comm, sizeof(ck.comm));   /* NUL-padded: an exact match */
        if (!filter_comms.lookup(&ck)) return 0;
    }
    if (fc->cgroups && !cgroup_wanted(fc)) return 0;
    return 1;
}

static __always_inline int port_wanted(struct conn_t *c, struct filter_conf *fc) {
    if (!fc->ports || c->family == 0) return 1;   /* family 0: unknown here, userspace filters once it resolves */
    struct port_key pk = {.slot = fc->slot, .port = c->lport};
    if (filter_ports.lookup(&pk)) return 1;
    pk.port = c->rport;
    return filter_ports.lookup(&pk) != 0;
}

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
/* The thread's state (shared.h: ecap_task): the entry-to-return stash of C calls, the active
 * session, and what the thread last found in the connection tables. Plain C, no Jinja:
 * probes.c.j2 includes it in the program text, since bcc rewrites table calls only in the text it
 * is given. `t` is the thread's ecap_task, or 0 when it has none (then the shared tables alone).
 *
 * A call is looked for in its thread's own storage first: a few compares, where the shared hash
 * costs a bucket-locked update at entry and a lookup plus a delete at return. The hashes are used
 * only when the thread's storage cannot be made or all its slots hold other calls, and looked at
 * only while ecap_spill says they may hold something: so the pair behaves as the one hash keyed
 * by stash_key (and by thread, for the active session) it replaces. */

static __always_inline struct ecap_task *task_state(u64 flags) {
    return ecap_task.task_storage_get(bpf_get_current_task_btf(), 0, flags);
}

static __always_inline u64 spilled(u32 which) {
    u64 *n = ecap_spill.lookup(&which);
    return n ? *n : 0;
}

static __always_inline void spill_count(u32 which, s64 delta) {
    u64 *n = ecap_spill.lookup(&which);
    if (n) __sync_fetch_and_add(n, delta);
}

/* Entry: stash call k (a call of the same key not returned yet is replaced, as by a hash update).
 * Nonzero when there was no room: the call is not recorded (LOSS_STASH). */
static __always_inline int stash_put(struct ecap_task *t, struct stash_key *k, struct stash_val *v) {
    if (t) {
        u32 key = (u32)k->target << 16 | k->hook;
        u32 live = t->live;
#pragma unroll
        for (int i = 0; i < ECAP_CALL_SLOTS; i++) {
            if ((live & (1u << i)) && t->keys[i] == key) {
                t->calls[i] = *v;
                return 0;
            }
        }
#pragma unroll
        for (int i = 0; i < ECAP_CALL_SLOTS; i++) {
            if (!(live & (1u << i))) {
                /* the key must not stay in the hash too (put there while the slots were taken) */
                if (spilled(SPILL_STASH) && ecap_stash.delete(k) == 0) spill_count(SPILL_STASH, -1);
                t->calls[i] = *v;
                t->keys[i] = key;
                t->live = live | 1u << i;
                return 0;
            }
        }
    }
    if (ecap_stash.update(k, v) != 0) return -1;
    spill_count(SPILL_STASH, 1);
    return 0;
}

/* Return: claim call k into v, exactly once (whichever return program runs first). 1 if claimed. */
static __always_inline int stash_take(struct ecap_task *t, struct stash_key *k, struct stash_val *v) {
    if (t) {
        u32 key = (u32)k->target << 16 | k->hook;
        u32 live = t->live;
#pragma unroll
        for (int i = 0; i < ECAP_CALL_SLOTS; i++) {
            if ((live & (1u << i)) && t->keys[i] == key) {
                *v = t->calls[i];
                t->live = live & ~(1u << i);
                return 1;
            }
        }
    }
    if (!spilled(SPILL_STASH)) return 0;
    struct stash_val *sv = ecap_stash.lookup(k);
    if (!sv) return 0;
    *v = *sv;
    if (ecap_stash.delete(k) != 0) return 0;
    spill_count(SPILL_STASH, -1);
    return 1;
}

/* The thread is inside a call on `session`: its syscalls tell the session's socket (state.c.j2). */
static __always_inline void session_begin(struct ecap_task *t, u32 tid, u64 session) {
    if (t) {
        if (spilled(SPILL_SESSION) && ecap_active_session.delete(&tid) == 0) spill_count(SPILL_SESSION, -1);
        if (!t->session_live) spill_count(LIVE_SESSIONS, 1);
        t->session = session;
        t->session_live = 1;
        return;
    }
    if (ecap_active_session.update(&tid, &session) == 0) spill_count(SPILL_SESSION, 1);
}

static __always_inline void session_end(struct ecap_task *t, u32 tid) {
    if (t && t->session_live) {
        t->session_live = 0;
        spill_count(LIVE_SESSIONS, -1);
    }
    if (spilled(SPILL_SESSION) && ecap_active_session.delete(&tid) == 0) spill_count(SPILL_SESSION, -1);
}

/* ecap_session_fd[proc, session]: 1 and *fd when the session's socket is known, else 0 (*fd -1).
 * The count of the table's writes is read before the lookup: a write after it makes the
 * remembered answer stale, and the count changes with it. */
static __always_inline int session_fd_of(struct ecap_task *t, u32 proc, u64 session, s32 *fd) {
    u32 which = EPOCH_SESSION_FD;
    u64 *writes = ecap_epoch.lookup(&which);
    if (!t || !writes) {
        struct session_key sk = {.tgid = proc, .session = session};
        s32 *fdp = ecap_session_fd.lookup(&sk);
        *fd = fdp ? *fdp : -1;
        return fdp != 0;
    }
    u64 epoch = *(volatile u64 *)writes;
    if (t->sock_known && t->sock_epoch == epoch && t->sock_session == session && t->sock_proc == proc) {
        *fd = t->sock_fd;
        return t->has_fd;
    }
    struct session_key sk = {.tgid = proc, .session = session};
    s32 *fdp = ecap_session_fd.lookup(&sk);
    s32 found = fdp ? *fdp : -1;
    t->sock_known = 1;
    t->sock_epoch = epoch;
    t->sock_session = session;
    t->sock_proc = proc;
    t->sock_fd = found;
    t->has_fd = fdp != 0;
    *fd = found;
    return fdp != 0;
}

/* ecap_conns[proc, fd] into *c (left as it is when unknown): 1 when known. Remembered as above. */
static __always_inline int conn_of(struct ecap_task *t, u32 proc, s32 fd, struct conn_t *c) {
    u32 which = EPOCH_CONNS;
    u64 *writes = ecap_epoch.lookup(&which);
    struct fd_key fk = {.tgid = proc, .fd = fd};
    if (!t || !writes) {
        struct conn_t *cp = ecap_conns.lookup(&fk);
        if (cp) *c = *cp;
        return cp != 0;
    }
    u64 epoch = *(volatile u64 *)writes;
    if (t->conn_known && t->conn_epoch == epoch && t->conn_fd == fd && t->conn_proc == proc) {
        if (t->has_conn) *c = t->conn;
        return t->has_conn;
    }
    struct conn_t *cp = ecap_conns.lookup(&fk);
    t->conn_known = 1;
    t->conn_epoch = epoch;
    t->conn_proc = proc;
    t->conn_fd = fd;
    t->has_conn = cp != 0;
    if (cp) {
        t->conn = *cp;
        *c = t->conn;
    }
    return cp != 0;
}

/* The thread's uid (the record's): remembered until the thread's next set*uid syscall. */
static __always_inline u32 task_uid(struct ecap_task *t) {
    if (t && t->uid_known) return t->uid;
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (t) {
        t->uid = uid;
        t->uid_known = 1;
    }
    return uid;
}

/* hook 0: return probe, record kind 1 */
int hook_0_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct filter_conf *fc = live_filters();
    if (!fc) return 0;
    if (!process_wanted(id >> 32, fc)) return 0;
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 0};
    struct stash_val v = {.args = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx)}, .gen = fc->gen, .conf_slot = fc->slot};
    struct ecap_task *t = task_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (stash_put(t, &k, &v) != 0) { count_loss(LOSS_STASH); return 0; }
    u64 session = v.args[0];
    s32 known_fd;
    /* Learn the session's socket from this call's syscalls only while it is unknown; the handshake
     * hook learns it for every new session, so a reused session pointer gets its new socket. */
    if (!session_fd_of(t, id >> 32, session, &known_fd))
        session_begin(t, (u32)id, session);
    return 0;
}

int hook_0_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    /* Completes the call whichever generation entered it; taking it claims it exactly once. The
     * call belongs to the generation that admitted it at entry (v.gen): its record is stamped
     * with it and port-filtered by its filters. Another generation's filters are not here (a
     * call entered before a switch), or no longer (its configuration was rewritten
     * while the call blocked): then the kernel admits it, flagged, and userspace decides. */
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 0};
    struct stash_val v;
    struct ecap_task *t = task_state(0);
    if (!stash_take(t, &k, &v)) return 0;
    u32 conf_slot = v.conf_slot & 1;
    struct filter_conf *fc = filter_conf.lookup(&conf_slot);
    if (!fc) return 0;
    u8 deferred = fc->gen != v.gen;
    s64 ret = (s32)PT_REGS_RC(ctx);   /* an int return leaves the upper half undefined */
    session_end(t, (u32)id);
    if (ret <= 0) return 0;
    struct conn_t c = {};
    s32 fd;
    if (session_fd_of(t, id >> 32, v.args[0], &fd))
        conn_of(t, id >> 32, fd, &c);
    if (!deferred) {
        int want = port_wanted(&c, fc);
        if (fc->gen != v.gen) deferred = 1;    /* rewritten meanwhile */
        else if (!want) return 0;
    }
    if (c.family) flow_claim(&c, id, ECAP_TARGET);     /* its packets are this target's (tc.c.j2) */
    u32 limit = deferred ? MAX_BYTES : fc->max_bytes;
    struct event *ev = event_start(id, task_uid(t), 0, 1, 2, v.gen);
    if (!ev) return 0;
    if (deferred) ev->h.flags |= FLAG_DEFERRED;
    ev->h.ret = ret;
    ev->h.session = v.args[0];
    ev->h.fd = fd;
    ev->h.conn = c;
    read_bytes(ev, (const void *)v.args[1], ret, limit);
    event_submit(ev);
    return 0;
}

/* hook 1: return probe, record kind 1 */
int hook_1_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct filter_conf *fc = live_filters();
    if (!fc) return 0;
    if (!process_wanted(id >> 32, fc)) return 0;
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 1};
    struct stash_val v = {.args = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx)}, .gen = fc->gen, .conf_slot = fc->slot};
    struct ecap_task *t = task_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (stash_put(t, &k, &v) != 0) { count_loss(LOSS_STASH); return 0; }
    u64 session = v.args[0];
    s32 known_fd;
    /* Learn the session's socket from this call's syscalls only while it is unknown; the handshake
     * hook learns it for every new session, so a reused session pointer gets its new socket. */
    if (!session_fd_of(t, id >> 32, session, &known_fd))
        session_begin(t, (u32)id, session);
    return 0;
}

int hook_1_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    /* Completes the call whichever generation entered it; taking it claims it exactly once. The
     * call belongs to the generation that admitted it at entry (v.gen): its record is stamped
     * with it and port-filtered by its filters. Another generation's filters are not here (a
     * call entered before a switch), or no longer (its configuration was rewritten
     * while the call blocked): then the kernel admits it, flagged, and userspace decides. */
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 1};
    struct stash_val v;
    struct ecap_task *t = task_state(0);
    if (!stash_take(t, &k, &v)) return 0;
    u32 conf_slot = v.conf_slot & 1;
    struct filter_conf *fc = filter_conf.lookup(&conf_slot);
    if (!fc) return 0;
    u8 deferred = fc->gen != v.gen;
    s64 ret = (s32)PT_REGS_RC(ctx);   /* an int return leaves the upper half undefined */
    session_end(t, (u32)id);
    if (ret <= 0) return 0;
    struct conn_t c = {};
    s32 fd;
    if (session_fd_of(t, id >> 32, v.args[0], &fd))
        conn_of(t, id >> 32, fd, &c);
    if (!deferred) {
        int want = port_wanted(&c, fc);
        if (fc->gen != v.gen) deferred = 1;    /* rewritten meanwhile */
        else if (!want) return 0;
    }
    if (c.family) flow_claim(&c, id, ECAP_TARGET);     /* its packets are this target's (tc.c.j2) */
    u32 limit = deferred ? MAX_BYTES : fc->max_bytes;
    struct event *ev = event_start(id, task_uid(t), 1, 1, 1, v.gen);
    if (!ev) return 0;
    if (deferred) ev->h.flags |= FLAG_DEFERRED;
    ev->h.ret = ret;
    ev->h.session = v.args[0];
    ev->h.fd = fd;
    ev->h.conn = c;
    read_bytes(ev, (const void *)v.args[1], ret, limit);
    event_submit(ev);
    return 0;
}

/* hook 2: return probe, record kind 1 */
int hook_2_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct filter_conf *fc = live_filters();
    if (!fc) return 0;
    if (!process_wanted(id >> 32, fc)) return 0;
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 2};
    struct stash_val v = {.args = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx)}, .gen = fc->gen, .conf_slot = fc->slot};
    struct ecap_task *t = task_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (stash_put(t, &k, &v) != 0) { count_loss(LOSS_STASH); return 0; }
    u64 session = v.args[0];
    s32 known_fd;
    /* Learn the session's socket from this call's syscalls only while it is unknown; the handshake
     * hook learns it for every new session, so a reused session pointer gets its new socket. */
    if (!session_fd_of(t, id >> 32, session, &known_fd))
        session_begin(t, (u32)id, session);
    return 0;
}

int hook_2_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    /* Completes the call whichever generation entered it; taking it claims it exactly once. The
     * call belongs to the generation that admitted it at entry (v.gen): its record is stamped
     * with it and port-filtered by its filters. Another generation's filters are not here (a
     * call entered before a switch), or no longer (its configuration was rewritten
     * while the call blocked): then the kernel admits it, flagged, and userspace decides. */
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 2};
    struct stash_val v;
    struct ecap_task *t = task_state(0);
    if (!stash_take(t, &k, &v)) return 0;
    u32 conf_slot = v.conf_slot & 1;
    struct filter_conf *fc = filter_conf.lookup(&conf_slot);
    if (!fc) return 0;
    u8 deferred = fc->gen != v.gen;
    s64 ret = (s32)PT_REGS_RC(ctx);   /* an int return leaves the upper half undefined */
    session_end(t, (u32)id);
    if (ret != 1) return 0;
    struct conn_t c = {};
    s32 fd;
    if (session_fd_of(t, id >> 32, v.args[0], &fd))
        conn_of(t, id >> 32, fd, &c);
    if (!deferred) {
        int want = port_wanted(&c, fc);
        if (fc->gen != v.gen) deferred = 1;    /* rewritten meanwhile */
        else if (!want) return 0;
    }
    if (c.family) flow_claim(&c, id, ECAP_TARGET);     /* its packets are this target's (tc.c.j2) */
    u32 limit = deferred ? MAX_BYTES : fc->max_bytes;
    struct event *ev = event_start(id, task_uid(t), 2, 1, 2, v.gen);
    if (!ev) return 0;
    if (deferred) ev->h.flags |= FLAG_DEFERRED;
    ev->h.ret = ret;
    ev->h.session = v.args[0];
    ev->h.fd = fd;
    ev->h.conn = c;
    u64 n = 0;
    bpf_probe_read_user(&n, sizeof(n), (const void *)v.args[3]);
    read_bytes(ev, (const void *)v.args[1], (s64)n, limit);
    event_submit(ev);
    return 0;
}

/* hook 3: return probe, record kind 1 */
int hook_3_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct filter_conf *fc = live_filters();
    if (!fc) return 0;
    if (!process_wanted(id >> 32, fc)) return 0;
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 3};
    struct stash_val v = {.args = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx)}, .gen = fc->gen, .conf_slot = fc->slot};
    struct ecap_task *t = task_state(BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (stash_put(t, &k, &v) != 0) { count_loss(LOSS_STASH); return 0; }
    u64 session = v.args[0];
    s32 known_fd;
    /* Learn the session's socket from this call's syscalls only while it is unknown; the handshake
     * hook learns it for every new session, so a reused session pointer gets its new socket. */
    if (!session_fd_of(t, id >> 32, session, &known_fd))
        session_begin(t, (u32)id, session);
    return 0;
}

int hook_3_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    /* Completes the call whichever generation entered it; taking it claims it exactly once. The
     * call belongs to the generation that admitted it at entry (v.gen): its record is stamped
     * with it and port-filtered by its filters. Another generation's filters are not here (a
     * call entered before a switch), or no longer (its configuration was rewritten
     * while the call blocked): then the kernel admits it, flagged, and userspace decides. */
    struct stash_key k = {.tid = (u32)id, .target = ECAP_TARGET, .hook = 3};
    struct stash_val v;
    struct ecap_task *t = task_state(0);
    if (!stash_take(t, &k, &v)) return 0;
    u32 conf_slot = v.conf_slot & 1;
    struct filter_conf *fc = filter_conf.lookup(&conf_slot);
    if (!fc) return 0;
    u8 deferred = fc->gen != v.gen;
    s64 ret = (s32)PT_REGS_RC(ctx);   /* an int return leaves the upper half undefined */
    session_end(t, (u32)id);
    if (ret != 1) return 0;
    struct conn_t c = {};
    s32 fd;
    if (session_fd_of(t, id >> 32, v.args[0], &fd))
        conn_of(t, id >> 32, fd, &c);
    if (!deferred) {
        int want = port_wanted(&c, fc);
        if (fc->gen != v.gen) deferred = 1;    /* rewritten meanwhile */
        else if (!want) return 0;
    }
    if (c.family) flow_claim(&c, id, ECAP_TARGET);     /* its packets are this target's (tc.c.j2) */
    u32 limit = deferred ? MAX_BYTES : fc->max_bytes;
    struct event *ev = event_start(id, task_uid(t), 3, 1, 1, v.gen);
    if (!ev) return 0;
    if (deferred) ev->h.flags |= FLAG_DEFERRED;
    ev->h.ret = ret;
    ev->h.session = v.args[0];
    ev->h.fd = fd;
    ev->h.conn = c;
    u64 n = 0;
    bpf_probe_read_user(&n, sizeof(n), (const void *)v.args[3]);
    read_bytes(ev, (const void *)v.args[1], (s64)n, limit);
    event_submit(ev);
    return 0;
}

/* hook 4: return probe, record kind 0 */
/* No record: only learns which socket the session uses from the syscalls made inside the call. */
int hook_4_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct filter_conf *fc = live_filters();
    if (!fc) return 0;
    if (!process_wanted(id >> 32, fc)) return 0;
    u64 args[6] = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx)};
    session_begin(task_state(BPF_LOCAL_STORAGE_GET_F_CREATE), (u32)id, args[0]);
    return 0;
}

int hook_4_return(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    session_end(task_state(0), tid);
    return 0;
}

/* hook 5: entry probe, record kind 4 */
int hook_5_entry(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    struct filter_conf *fc = live_filters();
    if (!fc) return 0;
    if (!process_wanted(id >> 32, fc)) return 0;
    struct stash_val v = {.args = {PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx)}};
    s64 ret = 0;
    struct conn_t c = {};
    s32 fd;
    if (session_fd_of(0, id >> 32, v.args[0], &fd))
        conn_of(0, id >> 32, fd, &c);
    if (!port_wanted(&c, fc)) return 0;
    if (c.family) flow_claim(&c, id, ECAP_TARGET);     /* its packets are this target's (tc.c.j2) */
    u32 limit = fc->max_bytes;
    struct event *ev = event_start(id, task_uid(0), 5, 4, 0, fc->gen);
    if (!ev) return 0;
    ev->h.ret = ret;
    ev->h.session = v.args[0];
    ev->h.fd = fd;
    ev->h.conn = c;
    /* A C key-log routine(session, label, secret, secret_len) on entry: the label string, the secret,
     * and the client random the routine would read from the session (its place found in the
     * library's code: anchors.py), laid out as go_keylog's. */
    u64 rp = v.args[0];
    if (rp && bpf_probe_read_user(&rp, sizeof(rp), (const void *)(rp + 48)) != 0) rp = 0;
    u64 ks = (u32)v.args[3];
    if (ks > 64) ks = 64;
    long kl = bpf_probe_read_user_str(ev->payload, 64, (const void *)v.args[1]);
    ev->h.args[0] = kl > 1 ? kl - 1 : 0;
    ev->h.args[1] = rp && bpf_probe_read_user(ev->payload + 64, 32, (const void *)(rp + 48)) == 0 ? 32 : 0;
    ev->h.args[2] = ks;
    if (ks > 0) bpf_probe_read_user(ev->payload + 96, ks & 127, (const void *)v.args[2]);
    ev->h.cap = 160;
    ev->h.len = 160;
    event_submit(ev);
    return 0;
}
