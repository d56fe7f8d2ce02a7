# Cython view of _layout.h (the single source of truth for the control segment).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, int64_t

cdef extern from "_layout.h" nogil:
    uint64_t SHMRCU_MAGIC
    int SHMRCU_LAYOUT_VERSION
    int SHMRCU_CACHE_LINE
    int SHMRCU_NAME_MAX
    int SHMRCU_GP_RECENT
    int SHMRCU_SECTIONS_FENCE
    int SHMRCU_SECTIONS_MEMBARRIER
    int SHMRCU_SLOT_FREE
    int SHMRCU_SLOT_CLAIMING
    int SHMRCU_SLOT_ACTIVE
    int64_t SHMRCU_LOCK_SLOT_BASE
    int64_t SHMRCU_LOCK_CONTROLLER
    int64_t SHMRCU_LOCK_WRITER_BASE

    ctypedef struct control_header:
        uint64_t magic
        uint32_t layout_version
        uint32_t header_size
        uint64_t total_size
        uint32_t max_workers
        uint32_t slot_size
        uint32_t slots_offset
        uint32_t sections_mode
        uint32_t creator_pid
        uint32_t mode
        uint64_t created_unix_ns
        char name[72]
        uint64_t global_epoch
        uint64_t completed_epoch
        uint64_t grace_periods
        uint64_t gp_wait_ns_total
        uint64_t slots_reclaimed
        uint64_t membarrier_fallbacks
        uint64_t gp_recent_head
        uint32_t gp_futex
        uint32_t gp_waiters
        uint32_t gp_recent_ns[256]
        uint64_t controller_pid
        uint64_t controller_epoch
        uint64_t next_map_id
        uint64_t freed_generation
        uint64_t destroyed_unix_ns
        uint64_t next_writer_id
        uint64_t reserved[10]

    ctypedef struct worker_slot:
        uint64_t ctr
        uint64_t state
        uint32_t pid
        int32_t worker_id
        uint64_t attach_unix_ns
        uint64_t events
        uint64_t batches
        uint64_t quiescent_states
        uint64_t last_advance_ns
        uint64_t freed_seen
        uint64_t restarts
        uint64_t user[2]

cdef extern from "_atomics.h" nogil:
    uint64_t shm_load_relaxed(const uint64_t *p)
    uint64_t shm_load_acquire(const uint64_t *p)
    uint64_t shm_load_seq_cst(const uint64_t *p)
    void shm_store_relaxed(uint64_t *p, uint64_t v)
    void shm_store_release(uint64_t *p, uint64_t v)
    void shm_store_seq_cst(uint64_t *p, uint64_t v)
    uint64_t shm_xchg_seq_cst(uint64_t *p, uint64_t v)
    void shm_store_full_fence(uint64_t *p, uint64_t v)
    uint64_t shm_fetch_add_relaxed(uint64_t *p, uint64_t v)
    uint64_t shm_fetch_or_release(uint64_t *p, uint64_t v)
    int shm_clz64(uint64_t v)
    uint64_t shm_fetch_add_seq_cst(uint64_t *p, uint64_t v)
    bint shm_cas_seq_cst(uint64_t *p, uint64_t expected, uint64_t desired)
    bint shm_cas_acq_rel(uint64_t *p, uint64_t expected, uint64_t desired)
    uint32_t shm_load_acquire32(const uint32_t *p)
    void shm_store_release32(uint32_t *p, uint32_t v)
    bint shm_cas_acq_rel32(uint32_t *p, uint32_t expected, uint32_t desired)
    uint32_t shm_load_relaxed32(const uint32_t *p)
    uint32_t shm_fetch_add_seq_cst32(uint32_t *p, uint32_t v)
    uint32_t shm_fetch_sub_seq_cst32(uint32_t *p, uint32_t v)
    int shm_futex_wait(uint32_t *addr, uint32_t expected, uint64_t timeout_ns)
    int shm_futex_wake_all(uint32_t *addr)
    void shm_fence_seq_cst()
    void shm_fence_acquire()
    void shm_fence_release()
    void shm_compiler_barrier()
    void shm_cpu_relax()
    uint64_t shm_monotonic_ns()
    void shm_sleep_ns(uint64_t ns)
    int SHM_MEMBARRIER_CMD_QUERY
    int SHM_MEMBARRIER_CMD_GLOBAL
    int SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED
    int SHM_MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED
    int shm_membarrier(int cmd)
    int shm_ofd_lock(int fd, int64_t byte)
    int shm_ofd_unlock(int fd, int64_t byte)
    int shm_ofd_held(int fd, int64_t byte)
