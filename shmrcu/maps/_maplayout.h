/* Binary layout of one map segment, /shmrcu.<runtime>.map.<id>, and of the
 * runtime's map directory, /shmrcu.<runtime>.dir.  Single source of truth:
 * Cython cimports it through _maplayout.pxd; Python gets the numbers from
 * shmrcu._maps (LAYOUT, KIND_*, ...).
 *
 * A map segment is
 *
 *   offset 0               map_header   (identity, geometry, state, live count)
 *   header.slots_offset    hash maps: map_slot-like records of slot_size bytes
 *                              [u64 ctl][u64 retire_epoch][key, padded to 8][value if inline]
 *   header.values_offset   the value cell of entry i, copy c is at
 *                              values_offset + c * copy_stride + i * value_stride
 *                          (a plain hash keeps its value inline in the slot:
 *                           value_stride == slot_size, copy_stride == 0)
 *
 * A value cell is the value itself, padded to 8 bytes -- except in a map with
 * SHMRCU_MAP_F_WHOLE_VALUES whose values are longer than 8 bytes: there it is
 *                              [u64 cell word][buffer 0][buffer 1]
 * (each buffer the value padded to 8), cell word = version << 32 | writer pid;
 * the value is buffer (version & 1).  Protocol in _kernels.pyx, "Whole values".
 *
 * Hash slot control word (ctl) = tag << 32 | generation << 8 | state, where
 * tag is the high half of the key's hash and generation grows at every claim
 * (so a re-read of ctl detects that a slot was recycled under us). */
#ifndef SHMRCU_MAPLAYOUT_H
#define SHMRCU_MAPLAYOUT_H
#include <stdint.h>
#include <stddef.h>

#define SHMRCU_MAP_MAGIC 0x3150414d55435253ull     /* "SRCUMAP1" little-endian */
#define SHMRCU_MAP_LAYOUT_VERSION 2                /* 2: whole-value cells */
#define SHMRCU_DIR_MAGIC 0x3152494455435253ull     /* "SRCUDIR1" */
#define SHMRCU_DIR_LAYOUT_VERSION 1
#define SHMRCU_MAP_NAME_MAX 64
#define SHMRCU_FORMAT_MAX 48                       /* struct format strings, NUL included */
#define SHMRCU_MAP_ALIGN 64                        /* regions start on cache lines */

/* kinds (BPF names in comments) */
#define SHMRCU_MAP_ARRAY 1              /* BPF_MAP_TYPE_ARRAY */
#define SHMRCU_MAP_HASH 2               /* BPF_MAP_TYPE_HASH */
#define SHMRCU_MAP_PER_WORKER_ARRAY 3   /* BPF_MAP_TYPE_PERCPU_ARRAY */
#define SHMRCU_MAP_PER_WORKER_HASH 4    /* BPF_MAP_TYPE_PERCPU_HASH */
#define SHMRCU_MAP_ARRAY_OF_MAPS 5      /* BPF_MAP_TYPE_ARRAY_OF_MAPS */
#define SHMRCU_MAP_HASH_OF_MAPS 6       /* BPF_MAP_TYPE_HASH_OF_MAPS */
#define SHMRCU_MAP_LPM_TRIE 7           /* BPF_MAP_TYPE_LPM_TRIE: a hash of (prefix length,
                                           masked address) keys + the lengths in use, below */
#define SHMRCU_MAP_KIND_MAX 7
#define SHMRCU_LPM_MAX_BITS 128         /* IPv6 */

/* map_header.flags */
#define SHMRCU_MAP_F_WORKER_READONLY 1u
#define SHMRCU_MAP_F_WHOLE_VALUES 2u    /* readers see each value whole (hash: always; arrays: asked for) */

/* map_header.state: the controller moves a map live -> retired -> freed */
#define SHMRCU_MAP_LIVE 1
#define SHMRCU_MAP_RETIRED 2
#define SHMRCU_MAP_FREED 3

/* update flags, as BPF_ANY / BPF_NOEXIST / BPF_EXIST */
#define SHMRCU_ANY 0
#define SHMRCU_NOEXIST 1
#define SHMRCU_EXIST 2

/* hash slot states (low byte of ctl) */
#define SHMRCU_SLOT_EMPTY 0       /* never used: a probe for a missing key ends here */
#define SHMRCU_SLOT_CLAIMED 1     /* an inserter owns it and is writing the key */
#define SHMRCU_SLOT_PENDING 2     /* key written, checking for a concurrent insert of the same key */
#define SHMRCU_SLOT_LIVE 3        /* key and value visible to lookups */
#define SHMRCU_SLOT_DELETING 4    /* being deleted: retire_epoch not yet recorded */
#define SHMRCU_SLOT_TOMB 5        /* deleted; reusable once completed_epoch >= retire_epoch */
#define SHMRCU_SLOT_STATE_MASK 0xffull
#define SHMRCU_SLOT_GEN_STEP 0x100ull
#define SHMRCU_SLOT_GEN_MASK 0xffffff00ull
#define SHMRCU_SLOT_HDR 16        /* ctl + retire_epoch */
#define SHMRCU_CELL_HDR 8         /* whole-value cell word */

/* directory entry states */
#define SHMRCU_DIR_EMPTY 0
#define SHMRCU_DIR_USED 1

typedef struct {
    /* --- identity and geometry: written once before magic, read-only after */
    uint64_t magic;             /* stored last (release): an opener never sees a half-made header */
    uint32_t layout_version;
    uint32_t header_size;       /* sizeof(map_header) */
    uint64_t total_size;        /* bytes of the whole segment (checked against fstat) */
    uint64_t id;
    uint32_t kind;              /* SHMRCU_MAP_* */
    uint32_t flags;             /* SHMRCU_MAP_F_* */
    uint32_t key_size;          /* bytes of a packed key */
    uint32_t key_stride;        /* key_size rounded up to 8 */
    uint32_t value_size;        /* bytes of one packed value (one copy) */
    uint32_t max_entries;
    uint32_t n_copies;          /* per-worker maps: max_workers of the runtime; else 1 */
    uint32_t creator_pid;
    uint64_t capacity;          /* hash: slots (a power of two); array: max_entries */
    uint64_t slot_size;         /* hash: bytes per slot; array: 0 */
    uint64_t slots_offset;
    uint64_t values_offset;
    uint64_t value_stride;      /* bytes between the cells of entries i and i+1 of one copy */
    uint64_t copy_stride;       /* bytes between copies c and c+1 of one entry */
    uint64_t created_unix_ns;
    char name[SHMRCU_MAP_NAME_MAX + 8];
    char key_format[SHMRCU_FORMAT_MAX];
    char value_format[SHMRCU_FORMAT_MAX];
    /* --- outer maps: the template every inner map must match */
    uint32_t inner_kind;        /* 0 for maps that are not outer maps */
    uint32_t inner_flags;
    uint32_t inner_key_size;
    uint32_t inner_value_size;
    uint32_t inner_max_entries;
    uint32_t _pad_inner;
    char inner_key_format[SHMRCU_FORMAT_MAX];
    char inner_value_format[SHMRCU_FORMAT_MAX];
    uint8_t _pad0[512 - 408];

    /* --- lifecycle: written by the controller, read by every handle's check */
    uint64_t state;             /* SHMRCU_MAP_LIVE / RETIRED / FREED */
    uint64_t state_epoch;       /* global epoch when the state last changed (controller's use) */
    uint64_t version;           /* the user's version word (m.version: e.g. the table's reload
                                   number, set by outer.replace); readers load it with acquire */
    uint64_t lpm_lengths[3];    /* lpm_trie: bit L set once a prefix of length L was inserted
                                   (0..128; never cleared: a stale bit costs one probe) */
    uint8_t _pad1[64 - 48];

    /* --- live-key count: hot for inserts and deletes, own cache line */
    uint64_t count;
    uint8_t _pad2[64 - 8];
} map_header;

/* One directory entry: what rt.maps() lists, found by name or id. */
typedef struct {
    uint64_t used;              /* SHMRCU_DIR_EMPTY / USED, published last (release) */
    uint64_t id;
    uint32_t kind;
    uint32_t flags;
    uint32_t max_entries;
    uint32_t state;             /* mirror of map_header.state, for listings */
    char name[SHMRCU_MAP_NAME_MAX + 8];
    char key_format[SHMRCU_FORMAT_MAX];
    char value_format[SHMRCU_FORMAT_MAX];
    uint8_t _pad1[256 - 200];
} dir_entry;

typedef struct {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t total_size;
    uint64_t capacity;          /* entries */
    uint64_t high_water;        /* entries [0, high_water) have been used at least once */
    uint8_t _pad[64 - 40];
} dir_header;

#define SHMRCU_DIR_CAPACITY 16384

_Static_assert(offsetof(map_header, _pad0) == 408, "map_header identity block size");
_Static_assert(offsetof(map_header, state) == 512, "map state starts its own cache line");
_Static_assert(offsetof(map_header, count) == 576, "live count starts its own cache line");
_Static_assert(sizeof(map_header) == 640, "map_header is ten cache lines");
_Static_assert(sizeof(dir_entry) == 256, "dir_entry is 256 bytes");
_Static_assert(sizeof(dir_header) == 64, "dir_header is one cache line");

static inline uint64_t shmrcu_round_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

static inline int shmrcu_kind_is_hash(uint32_t kind) {
    return kind == SHMRCU_MAP_HASH || kind == SHMRCU_MAP_PER_WORKER_HASH || kind == SHMRCU_MAP_HASH_OF_MAPS ||
           kind == SHMRCU_MAP_LPM_TRIE;
}

/* Hash capacity for max_entries live keys: a power of two >= 2 * max_entries,
 * so live keys load at most half the table and as many deleted slots can wait
 * for their grace period before an insert has to wait for one. */
static inline uint64_t shmrcu_hash_capacity(uint32_t max_entries) {
    uint64_t c = 8;
    while (c < 2ull * max_entries) c <<= 1;
    return c;
}

/* Whole-value cells: a map whose values are read and written through the
 * double-buffered cell protocol (values of at most 8 bytes are one word anyway). */
static inline int shmrcu_map_has_cells(const map_header *h) {
    return (h->flags & SHMRCU_MAP_F_WHOLE_VALUES) && h->value_size > 8;
}

/* Bytes of one value cell (see the layout above). */
static inline uint64_t shmrcu_cell_size(const map_header *h) {
    uint64_t vstride = shmrcu_round_up(h->value_size, 8);
    return shmrcu_map_has_cells(h) ? SHMRCU_CELL_HDR + 2 * vstride : vstride;
}

/* Geometry of a map from its spec.  The creator fills a header with it and an
 * opener recomputes it to validate the header: one function, no second copy.
 * Returns the total segment size, or 0 when the spec is impossible. */
static inline uint64_t shmrcu_map_geometry(map_header *h) {
    uint64_t cell = shmrcu_cell_size(h);
    if (h->kind < 1 || h->kind > SHMRCU_MAP_KIND_MAX || h->key_size == 0 || h->value_size == 0 ||
        h->max_entries == 0 || h->n_copies == 0)
        return 0;
    h->key_stride = (uint32_t)shmrcu_round_up(h->key_size, 8);
    h->header_size = sizeof(map_header);
    if (shmrcu_kind_is_hash(h->kind)) {
        h->capacity = shmrcu_hash_capacity(h->max_entries);
        h->slots_offset = sizeof(map_header);
        if (h->n_copies == 1) {       /* value inline: one cache line serves a lookup */
            h->slot_size = SHMRCU_SLOT_HDR + h->key_stride + cell;
            h->values_offset = h->slots_offset + SHMRCU_SLOT_HDR + h->key_stride;
            h->value_stride = h->slot_size;
            h->copy_stride = 0;
            return shmrcu_round_up(h->slots_offset + h->capacity * h->slot_size, SHMRCU_MAP_ALIGN);
        }
        /* per-worker: each worker's copies in a region of their own (no false sharing) */
        h->slot_size = SHMRCU_SLOT_HDR + h->key_stride;
        h->values_offset = shmrcu_round_up(h->slots_offset + h->capacity * h->slot_size, SHMRCU_MAP_ALIGN);
        h->value_stride = cell;
        h->copy_stride = shmrcu_round_up(h->capacity * cell, SHMRCU_MAP_ALIGN);
        return h->values_offset + h->n_copies * h->copy_stride;
    }
    h->capacity = h->max_entries;
    h->slot_size = 0;
    h->slots_offset = sizeof(map_header);
    h->values_offset = sizeof(map_header);
    h->value_stride = cell;
    h->copy_stride = shmrcu_round_up(h->capacity * cell, SHMRCU_MAP_ALIGN);
    return h->values_offset + h->n_copies * h->copy_stride;
}

#endif
