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
