/* State shared by every generation of every target in one `ecapture apply`.
 * templates/kern/state.c.j2 (owner: orchestrator/bpf/state.py) creates these tables once;
 * each probes.c.j2 generation declares them extern. So an SSL_read entered under one
 * generation is completed under the next, connections keep their addresses, and the
 * per-process sequence carries on across reloads. */
#ifndef ECAPTURE_SHARED_H
#define ECAPTURE_SHARED_H
#include "common.h"

#ifdef ECAP_STATE_OWNER
#define ECAP_TABLE(kind, k, v, name, n) BPF_TABLE_PUBLIC(kind, k, v, name, n)
/* Task storage needs BPF_F_NO_PREALLOC, which BPF_TABLE_PUBLIC cannot pass. */
#define ECAP_TASK_TABLE(v, name) BPF_F_TABLE("task_storage", int, v, name, 0, BPF_F_NO_PREALLOC); \
    __attribute__((section("maps/export"))) struct name##_table_t __##name
#else
#define ECAP_TABLE(kind, k, v, name, n) BPF_TABLE("extern", k, v, name, n)
#define ECAP_TASK_TABLE(v, name) BPF_TABLE("extern", int, v, name, 0)
#endif

/* The context of every syscalls:sys_enter_* / sys_exit_* tracepoint (see their format files). */
struct ecap_sys_enter { u64 _common; s32 nr; u32 _pad; u64 args[6]; };
struct ecap_sys_exit { u64 _common; s32 nr; u32 _pad; s64 ret; };

struct stash_key { u32 tid; u16 target; u16 hook; };
/* Go code: a call is matched from entry to return by goroutine (its g, in R14), not by thread,
 * as a goroutine may move between threads while it blocks. */
struct go_stash_key { u64 g; u32 tgid; u16 target; u16 hook; };
/* gen: the generation whose entry program admitted the call (its filters decide it, and its
 * number stamps the record, whichever generation's return program completes it); conf_slot: the
 * filter configuration (0 or 1, filters.c.j2) that admitted it. */
struct stash_val { u64 args[6]; u32 gen; u32 conf_slot; };

/* Record flag: the kernel admitted the record without applying its generation's port filter and
 * max_bytes (its call was completed by another generation, or the configuration that admitted it
 * has since been rewritten); userspace applies them with the record's own generation's values.
 * Mirrored by layout.FLAG_DEFERRED. */
#define FLAG_DEFERRED 2
struct fd_key { u32 tgid; s32 fd; };
struct session_key { u32 tgid; u32 _pad; u64 session; };
struct remote_key { u16 family; u16 rport; u8 raddr[16]; };

/* The per-thread state of C calls in one task's BPF storage (found from the task itself: no
 * shared hash, no bucket lock, freed with the thread). Kept by stash.h (the probes) and state.c.j2.
 * - A call's stash entry (key: stash_key) is in a slot of its thread's ecap_task while one is free,
 *   else in ecap_stash; a key is in one place at most.
 * - The thread's active session (the TLS session whose socket its syscalls reveal, state.c.j2) is
 *   there too, else (the storage could not be made) in ecap_active_session.
 *   ecap_spill counts what went to those two hashes (a put minus a claimed delete, so never less
 *   than what they hold): while a count is 0, its hash is not looked at. It also counts the threads
 *   with an active session: while there are none, a syscall needs no look at all.
 * - What the thread last found in ecap_session_fd and ecap_conns, with the ecap_epoch count of
 *   writes to that table it was found at: while the count is the same, nothing was written to the
 *   table (and an LRU table evicts only when written), so the lookup would find the same.
 * - The thread's uid, forgotten when the thread makes a set*uid syscall (only a thread changes its
 *   own uid). */
#define ECAP_CALL_SLOTS 4
struct ecap_task {
    u32 live;                           /* bit i: calls[i] holds a call */
    u32 keys[ECAP_CALL_SLOTS];          /* target << 16 | hook of calls[i] */
    u32 session_live;                   /* the thread is inside a call on `session` */
    u64 session;
    u32 uid;                            /* bpf_get_current_uid_gid() of the thread, while uid_known */
    u32 uid_known;
    /* ecap_session_fd[sock_proc, sock_session] at write count sock_epoch: has_fd, sock_fd */
    u64 sock_session;
    u64 sock_epoch;
    u32 sock_proc;
    s32 sock_fd;
    u32 sock_known;
    u32 has_fd;
    /* ecap_conns[conn_proc, conn_fd] at write count conn_epoch: has_conn, conn */
    u64 conn_epoch;
    u32 conn_proc;
    s32 conn_fd;
    u32 conn_known;
    u32 has_conn;
    struct conn_t conn;
    struct stash_val calls[ECAP_CALL_SLOTS];
};
#define SPILL_STASH   0     /* ecap_spill[0]: ecap_stash entries */
#define SPILL_SESSION 1     /* ecap_spill[1]: ecap_active_session entries */
#define LIVE_SESSIONS 2     /* ecap_spill[2]: threads whose session_live is set (not less) */
#define EPOCH_SESSION_FD 0  /* ecap_epoch[0]: writes to ecap_session_fd */
#define EPOCH_CONNS      1  /* ecap_epoch[1]: writes and deletes in ecap_conns */
ECAP_TASK_TABLE(struct ecap_task, ecap_task);
ECAP_TABLE("array", u32, u64, ecap_spill, 3);
ECAP_TABLE("array", u32, u64, ecap_epoch, 2);

ECAP_TABLE("lru_hash", u32, u64, ecap_seqs, 16384);
ECAP_TABLE("hash", struct stash_key, struct stash_val, ecap_stash, 16384);
ECAP_TABLE("hash", struct go_stash_key, struct stash_val, ecap_go_stash, 16384);
ECAP_TABLE("hash", u32, u64, ecap_active_session, 16384);
ECAP_TABLE("lru_hash", struct fd_key, struct conn_t, ecap_conns, 65536);
ECAP_TABLE("lru_hash", struct remote_key, struct conn_t, ecap_accepted, 8192);
ECAP_TABLE("lru_hash", struct session_key, s32, ecap_session_fd, 65536);
ECAP_TABLE("hash", u32, s32, ecap_connecting, 8192);
ECAP_TABLE("hash", u32, u64, ecap_accepting, 8192);

/* Packet capture (tc.c.j2, owner: bpf/packets.py): the connections the targets' hooks were seen on,
 * keyed by both endpoints in a fixed order (the lower port, or on a tie the lower address, first)
 * so either direction of a packet finds it. The probes claim a connection the first time they
 * see it (event.h flow_claim); the classifier keeps its packets and names the process. */
struct flow_key { u16 family; u16 port_a; u16 port_b; u16 _pad; u8 addr_a[16]; u8 addr_b[16]; };
struct flow_owner { u32 tgid; u16 target; u16 _pad; char comm[16]; };
ECAP_TABLE("lru_hash", struct flow_key, struct flow_owner, ecap_flow_owner, 65536);
/* [0] != 0 while a classifier captures (bpf/packets.py): until then the probes claim nothing. */
ECAP_TABLE("array", u32, u32, ecap_packets_on, 1);

/* Is (a, pa) before (b, pb) in the key's order? */
static __always_inline int endpoint_first(const u8 *a, u16 pa, const u8 *b, u16 pb) {
    if (pa != pb) return pa < pb;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        if (a[i] != b[i]) return a[i] < b[i];
    }
    return 1;
}

static __always_inline void flow_key_of(struct flow_key *k, u16 family, const u8 *a, u16 pa, const u8 *b, u16 pb) {
    k->family = family;
    k->_pad = 0;
    if (endpoint_first(a, pa, b, pb)) {
        k->port_a = pa; k->port_b = pb;
        __builtin_memcpy(k->addr_a, a, 16);
        __builtin_memcpy(k->addr_b, b, 16);
    } else {
        k->port_a = pb; k->port_b = pa;
        __builtin_memcpy(k->addr_a, b, 16);
        __builtin_memcpy(k->addr_b, a, 16);
    }
}

#endif
