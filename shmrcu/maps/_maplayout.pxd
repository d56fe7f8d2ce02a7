# Cython view of _maplayout.h (the single source of truth for map segments and
# the map directory).  Field comments live in the header.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "_maplayout.h" nogil:
    uint64_t SHMRCU_MAP_MAGIC
    int SHMRCU_MAP_LAYOUT_VERSION
    uint64_t SHMRCU_DIR_MAGIC
    int SHMRCU_DIR_LAYOUT_VERSION
    int SHMRCU_MAP_NAME_MAX
    int SHMRCU_FORMAT_MAX
    int SHMRCU_MAP_ALIGN

    int SHMRCU_MAP_ARRAY
    int SHMRCU_MAP_HASH
    int SHMRCU_MAP_PER_WORKER_ARRAY
    int SHMRCU_MAP_PER_WORKER_HASH
    int SHMRCU_MAP_ARRAY_OF_MAPS
    int SHMRCU_MAP_HASH_OF_MAPS
    int SHMRCU_MAP_LPM_TRIE
    int SHMRCU_LPM_MAX_BITS
    int SHMRCU_MAP_KIND_MAX

    uint32_t SHMRCU_MAP_F_WORKER_READONLY
    uint32_t SHMRCU_MAP_F_WHOLE_VALUES

    int SHMRCU_MAP_LIVE
    int SHMRCU_MAP_RETIRED
    int SHMRCU_MAP_FREED

    int SHMRCU_ANY
    int SHMRCU_NOEXIST
    int SHMRCU_EXIST

    uint64_t SHMRCU_SLOT_EMPTY
    uint64_t SHMRCU_SLOT_CLAIMED
    uint64_t SHMRCU_SLOT_PENDING
    uint64_t SHMRCU_SLOT_LIVE
    uint64_t SHMRCU_SLOT_DELETING
    uint64_t SHMRCU_SLOT_TOMB
    uint64_t SHMRCU_SLOT_STATE_MASK
    uint64_t SHMRCU_SLOT_GEN_STEP
    uint64_t SHMRCU_SLOT_GEN_MASK
    int SHMRCU_SLOT_HDR
    int SHMRCU_CELL_HDR

    int SHMRCU_DIR_EMPTY
    int SHMRCU_DIR_USED
    int SHMRCU_DIR_CAPACITY

    ctypedef struct map_header:
        uint64_t magic
        uint32_t layout_version
        uint32_t header_size
        uint64_t total_size
        uint64_t id
        uint32_t kind
        uint32_t flags
        uint32_t key_size
        uint32_t key_stride
        uint32_t value_size
        uint32_t max_entries
        uint32_t n_copies
        uint32_t creator_pid
        uint64_t capacity
        uint64_t slot_size
        uint64_t slots_offset
        uint64_t values_offset
        uint64_t value_stride
        uint64_t copy_stride
        uint64_t created_unix_ns
        char name[72]
        char key_format[48]
        char value_format[48]
        uint32_t inner_kind
        uint32_t inner_flags
        uint32_t inner_key_size
        uint32_t inner_value_size
        uint32_t inner_max_entries
        char inner_key_format[48]
        char inner_value_format[48]
        uint64_t state
        uint64_t state_epoch
        uint64_t version
        uint64_t lpm_lengths[3]
        uint64_t count

    ctypedef struct dir_entry:
        uint64_t used
        uint64_t id
        uint32_t kind
        uint32_t flags
        uint32_t max_entries
        uint32_t state
        char name[72]
        char key_format[48]
        char value_format[48]

    ctypedef struct dir_header:
        uint64_t magic
        uint32_t layout_version
        uint32_t header_size
        uint64_t total_size
        uint64_t capacity
        uint64_t high_water

    uint64_t shmrcu_round_up(uint64_t n, uint64_t a)
    bint shmrcu_kind_is_hash(uint32_t kind)
    uint64_t shmrcu_hash_capacity(uint32_t max_entries)
    uint64_t shmrcu_map_geometry(map_header* h)
    bint shmrcu_map_has_cells(const map_header* h)
