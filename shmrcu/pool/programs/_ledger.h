/* The pool's per-worker ledger: one entry per pool worker id, in an `array`
 * map the pool creates (value "16Q": 128 bytes, two cache lines, so two
 * workers' ledgers never share a line).  Single source of truth for the field
 * order: _ledger.pyx exports the indices to Python.
 *
 * The ledger lives in a map segment, not in the worker's RCU slot, because it
 * must outlive the worker: a slot is reset when a dead owner's slot is
 * reclaimed, the ledger keeps counting across restarts.
 *
 * Journal (exact counts across SIGKILL).  A kernel applying one event to a
 * per-worker copy -- a location only this worker writes -- first records where
 * and what it is about to write (j_map, j_offset, j_packets, j_bytes), then
 * opens the journal (j_seq = applied + 1), writes bytes then packets, then
 * commits (applied = j_seq).  A worker can die between any two of these
 * stores; after its death the pool looks: j_seq == applied + 1 means an event
 * was in flight, and packets == j_packets + 1 tells whether it reached the
 * map (roll forward: applied = j_seq) or not (roll back bytes).  Stores of a
 * process that died are all visible, in program order, once waitpid() has
 * reaped it, so compiler ordering is the only ordering the worker needs. */
#ifndef SHMRCU_LEDGER_H
#define SHMRCU_LEDGER_H
#include <stdint.h>

typedef struct {
    uint64_t applied;      /* events applied (committed), all incarnations */
    uint64_t batches;
    uint64_t dropped;      /* events a kernel could not apply (map full, no inner map) */
    uint64_t hits;         /* route_lookup */
    uint64_t misses;
    uint64_t j_seq;        /* == applied + 1 while an event is in flight */
    uint64_t j_map;        /* id of the map being written */
    uint64_t j_offset;     /* byte offset of the packets field in that map's segment */
    uint64_t j_packets;    /* packets before the event */
    uint64_t j_bytes;      /* bytes before the event (the field after packets) */
    uint64_t uncertain;    /* events that died in flight on a shared (atomic) map */
    uint64_t incarnation;  /* starts of this worker id (pool writes) */
    uint64_t pid;          /* current process (worker writes after registering) */
    uint64_t slot;         /* its RCU slot index */
    uint64_t reserved[2];
} pool_ledger;

_Static_assert(sizeof(pool_ledger) == 128, "a ledger entry is two cache lines");
#define SHMRCU_LEDGER_FORMAT "16Q"
#endif
