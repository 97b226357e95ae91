/* The entry-to-return stash of C calls and the thread's active session (shared.h: ecap_task, with
 * ecap_stash and ecap_active_session for what does not fit). Plain C, no Jinja: probes.c.j2
 * includes it in the program text, since bcc rewrites table calls only in the text it is given.
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
#pragma unroll
        for (int i = 0; i < ECAP_CALL_SLOTS; i++) {
            struct ecap_call *c = &t->calls[i];
            if (c->live && c->target == k->target && c->hook == k->hook) {
                c->v = *v;
                return 0;
            }
        }
#pragma unroll
        for (int i = 0; i < ECAP_CALL_SLOTS; i++) {
            struct ecap_call *c = &t->calls[i];
            if (!c->live) {
                /* the key must not stay in the hash too (put there while the slots were taken) */
                if (spilled(SPILL_STASH) && ecap_stash.delete(k) == 0) spill_count(SPILL_STASH, -1);
                c->v = *v;
                c->target = k->target;
                c->hook = k->hook;
                c->live = 1;
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
#pragma unroll
        for (int i = 0; i < ECAP_CALL_SLOTS; i++) {
            struct ecap_call *c = &t->calls[i];
            if (c->live && c->target == k->target && c->hook == k->hook) {
                *v = c->v;
                c->live = 0;
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
        t->session = session;
        t->session_live = 1;
        return;
    }
    if (ecap_active_session.update(&tid, &session) == 0) spill_count(SPILL_SESSION, 1);
}

static __always_inline void session_end(struct ecap_task *t, u32 tid) {
    if (t) t->session_live = 0;
    if (spilled(SPILL_SESSION) && ecap_active_session.delete(&tid) == 0) spill_count(SPILL_SESSION, -1);
}
