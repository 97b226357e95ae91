/* Event layout shared by every ecapture kernel program.
 * Mirrored in Python by orchestrator/bpf/layout.py; a test checks the two agree. */
#ifndef ECAPTURE_COMMON_H
#define ECAPTURE_COMMON_H

#define RECORD_DATA    1
#define RECORD_COMMAND 2
#define RECORD_CALL    3
#define RECORD_SECRET  4   /* a TLS secret, as the library's key-log routine was given it */

#define DIR_NONE  0
#define DIR_READ  1
#define DIR_WRITE 2

#define FLAG_TRUNCATED 1

#define LOSS_RINGBUF 0   /* ring buffer full: record dropped */
#define LOSS_STASH   1   /* entry-to-return stash map full: call not recorded */
#define LOSS_SLOTS   2

struct conn_t {
    u16 family;          /* 0 unknown, AF_INET, AF_INET6 */
    u16 lport;           /* host byte order */
    u16 rport;
    u16 _pad;
    u8 laddr[16];        /* IPv4 in the first 4 bytes */
    u8 raddr[16];
};

struct event_header {
    u64 ts;              /* CLOCK_MONOTONIC ns */
    u64 seq;             /* per captured process; a gap means records were lost */
    u64 session;         /* TLS session pointer, 0 if none */
    s64 ret;             /* return value (return probes) */
    u64 args[6];         /* raw register values of the arguments */
    u32 pid;
    u32 tid;
    u32 uid;
    s32 fd;              /* -1 when unknown */
    u32 len;             /* payload length at the source */
    u32 cap;             /* payload bytes that follow this header */
    u16 hook;            /* index into the target's hook table */
    u8 record;           /* RECORD_* */
    u8 direction;        /* DIR_* */
    u8 flags;            /* FLAG_* */
    u8 _pad;
    u16 gen;             /* generation that made the record, modulo 2^16 */
    struct conn_t conn;
    char comm[16];
    u64 cgroup;          /* cgroup v2 id of the task (its directory's inode number); 0 unknown */
};

#endif
