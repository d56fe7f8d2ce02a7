/* Binary layout of a runtime's control segment, /shmrcu.<name>.ctl.
 * This header is the single source of truth: Cython cimports it through
 * _layout.pxd and _epoch exports the numbers to Python (shmrcu._epoch.LAYOUT).
 *
 *   offset 0              control_header   (identity, geometry, shared counters)
 *   header.slots_offset   worker_slot[max_workers]
 *
 * Hot words sit on cache lines of their own: the global epoch is read by every
 * reader on every quiescent point, the completed epoch and the statistics are
 * written by updaters only, and each worker slot is written by one reader. */
#ifndef SHMRCU_LAYOUT_H
#define SHMRCU_LAYOUT_H
#include <stdint.h>

#define SHMRCU_MAGIC 0x3130554352484d53ull   /* "SMHRCU01" little-endian */
#define SHMRCU_LAYOUT_VERSION 1
#define SHMRCU_CACHE_LINE 64
#define SHMRCU_NAME_MAX 64
#define SHMRCU_GP_RECENT 256

/* reader styles (control_header.sections_mode) */
#define SHMRCU_SECTIONS_FENCE 0
#define SHMRCU_SECTIONS_MEMBARRIER 1

/* worker_slot.state = generation << 8 | status */
#define SHMRCU_SLOT_FREE 0
#define SHMRCU_SLOT_CLAIMING 1
#define SHMRCU_SLOT_ACTIVE 2

/* OFD lock bytes on the control segment's file.  Advisory locks never touch
 * the data, so they may lie inside or beyond the segment. */
#define SHMRCU_LOCK_SLOT_BASE 0              /* + slot index: held by the slot's owner */
#define SHMRCU_LOCK_CONTROLLER (1ll << 40)   /* held by the controller (lease) */
/* + writer id: the "writer mark".  Every process attached to the runtime gets a
 * writer id (next_writer_id: unique within the runtime, never reused) and holds
 * this byte for as long as it is attached; whole-value writers claim a map value
 * in the name of their writer id, so another writer that finds a claim can tell
 * whether its owner is still there -- the kernel drops the mark at death.  No
 * pid is involved: PID reuse and pid namespaces cannot fake it. */
#define SHMRCU_LOCK_WRITER_BASE (1ll << 41)

typedef struct {
    /* --- identity and geometry: written once at creation, read-only after */
    uint64_t magic;             /* stored last (release) so attach never sees a half-made header */
    uint32_t layout_version;
    uint32_t header_size;       /* sizeof(control_header) */
    uint64_t total_size;        /* bytes of the whole segment */
    uint32_t max_workers;
    uint32_t slot_size;         /* sizeof(worker_slot) */
    uint32_t slots_offset;
    uint32_t sections_mode;     /* SHMRCU_SECTIONS_* */
    uint32_t creator_pid;
    uint32_t mode;              /* permission bits used for every segment of the runtime */
    uint64_t created_unix_ns;
    char name[SHMRCU_NAME_MAX + 8];
    uint8_t _pad0[256 - 128];

    /* --- the global epoch: read by every reader, own cache lines */
    uint64_t global_epoch;
    uint8_t _pad1[128 - 8];

    /* --- updater side: completed epoch and grace-period statistics */
    uint64_t completed_epoch;   /* highest target known to have elapsed */
    uint64_t grace_periods;     /* waits that completed (shared ones count once per waiter) */
    uint64_t gp_wait_ns_total;
    uint64_t slots_reclaimed;   /* dead owners found by waiters */
    uint64_t membarrier_fallbacks;
    uint64_t gp_recent_head;    /* next index into gp_recent_ns (mod SHMRCU_GP_RECENT) */
    uint32_t gp_futex;          /* bumped by a reader that advanced while waiters sleep */
    uint32_t gp_waiters;        /* grace-period waiters asleep (or about to sleep) on gp_futex */
    uint8_t _pad2[128 - 56];
    uint32_t gp_recent_ns[SHMRCU_GP_RECENT]; /* latest grace-period waits, ns (saturating) */

    /* --- controller and map bookkeeping (controller / maps layers) */
    uint64_t controller_pid;    /* informational; the lease itself is the OFD lock */
    uint64_t controller_epoch;  /* bumps at every takeover */
    uint64_t next_map_id;       /* map ids grow and are never reused */
    uint64_t freed_generation;  /* bumps whenever maps are freed: readers drop stale mappings */
    uint64_t destroyed_unix_ns; /* nonzero once the runtime is destroyed (or cleaned up): every
                                   attached process raises RuntimeDestroyed instead of serving it */
    uint64_t next_writer_id;    /* writer ids (one per process and runtime) grow, never reused */
    uint64_t reserved[10];
} control_header;

typedef struct {
    /* --- line 0: the epoch word and ownership (read by grace-period waiters) */
    uint64_t ctr;               /* 0: offline; e>0: online, may hold refs taken since epoch e */
    uint64_t state;             /* generation << 8 | SHMRCU_SLOT_* */
    uint32_t pid;
    int32_t worker_id;          /* pool index, -1 for a free-standing reader */
    uint64_t attach_unix_ns;
    uint8_t _pad0[64 - 32];
    /* --- line 1: statistics published by the owner at batch granularity */
    uint64_t events;
    uint64_t batches;
    uint64_t quiescent_states;
    uint64_t last_advance_ns;   /* CLOCK_MONOTONIC of the last published quiescent state */
    uint64_t freed_seen;        /* freed_generation this reader last acted on */
    uint64_t restarts;
    uint64_t user[2];
} worker_slot;

_Static_assert(sizeof(control_header) % SHMRCU_CACHE_LINE == 0, "control_header ends on a cache line");
_Static_assert(__builtin_offsetof(control_header, global_epoch) == 256, "global epoch starts its own line");
_Static_assert(sizeof(worker_slot) == 128, "worker_slot is two cache lines");

#endif
