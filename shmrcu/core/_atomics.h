/* Thin C helpers for shmrcu's Cython core: atomics, fences, membarrier,
 * OFD byte-range locks and a monotonic clock.  Everything is static inline so
 * Cython code that cimports these stays branch-and-call free on hot paths.
 * The memory order of each use is justified where it is used (_epoch.pyx,
 * the map kernels); these wrappers only name the orders. */
#ifndef SHMRCU_ATOMICS_H
#define SHMRCU_ATOMICS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#ifndef F_OFD_GETLK
#define F_OFD_GETLK 36
#define F_OFD_SETLK 37
#define F_OFD_SETLKW 38
#endif

/* ---- 64-bit atomics ---------------------------------------------------- */
static inline uint64_t shm_load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint64_t shm_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t shm_load_seq_cst(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void shm_store_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void shm_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void shm_store_seq_cst(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
/* xchg is a full barrier on x86: a store plus fence in one, cheaper than mov+mfence. */
static inline uint64_t shm_xchg_seq_cst(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
/* A store followed by a full fence: later plain loads are ordered after the store.
 * On x86 a seq_cst xchg is exactly that.  Elsewhere (arm64 without LSE: ldaxr/stlxr)
 * a seq_cst exchange does not order later plain loads, so store, then fence. */
static inline void shm_store_full_fence(uint64_t *p, uint64_t v) {
#if defined(__x86_64__) || defined(__i386__)
    (void)__atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
#else
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}
static inline uint64_t shm_fetch_add_relaxed(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint64_t shm_fetch_add_seq_cst(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t shm_fetch_or_release(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_RELEASE); }
static inline int shm_clz64(uint64_t v) { return __builtin_clzll(v); }   /* v != 0 */
static inline int shm_cas_seq_cst(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline int shm_cas_acq_rel(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
/* 32-bit variants (hash-slot states, flags). */
static inline uint32_t shm_load_acquire32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void shm_store_release32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int shm_cas_acq_rel32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline uint32_t shm_load_relaxed32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline uint32_t shm_fetch_add_seq_cst32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t shm_fetch_sub_seq_cst32(uint32_t *p, uint32_t v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }

static inline void shm_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* Seqlock-style fences (Boehm, "Can seqlocks get along with programming language
 * memory models?"): a reader's data loads, then acquire fence, then the re-check;
 * a writer's claim, then release fence, then its data stores. */
static inline void shm_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void shm_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
/* Stops the compiler (not the CPU) from moving memory accesses across it. */
static inline void shm_compiler_barrier(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

static inline void shm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* ---- time -------------------------------------------------------------- */
static inline uint64_t shm_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline void shm_sleep_ns(uint64_t ns) {
    struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
    nanosleep(&ts, NULL);
}

/* ---- futex(2) on shared memory (not FUTEX_PRIVATE: waiters and wakers are
 * different processes) ------------------------------------------------------- */
#include <limits.h>
#include <linux/futex.h>
static inline int shm_futex_wait(uint32_t *addr, uint32_t expected, uint64_t timeout_ns) {
    struct timespec ts = { (time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull) };
    return (int)syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, NULL, 0);
}
static inline int shm_futex_wake_all(uint32_t *addr) {
    return (int)syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---- membarrier(2) ----------------------------------------------------- */
#define SHM_MEMBARRIER_CMD_QUERY 0
#define SHM_MEMBARRIER_CMD_GLOBAL 1
#define SHM_MEMBARRIER_CMD_GLOBAL_EXPEDITED 2
#define SHM_MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED 4
static inline int shm_membarrier(int cmd) {
#ifdef SYS_membarrier
    long r = syscall(SYS_membarrier, cmd, 0, 0);
    return r < 0 ? -errno : (int)r;
#else
    return -ENOSYS;
#endif
}

/* ---- OFD byte-range locks ---------------------------------------------
 * An OFD lock belongs to the open file description, so the kernel drops it
 * when the last descriptor of that description closes -- in particular when
 * the owning process dies, even by SIGKILL.  PID reuse cannot fake it. */
static inline int shm_ofd_lock(int fd, int64_t byte) {
    struct flock fl = {0};
    fl.l_type = F_WRLCK; fl.l_whence = SEEK_SET; fl.l_start = byte; fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}
static inline int shm_ofd_unlock(int fd, int64_t byte) {
    struct flock fl = {0};
    fl.l_type = F_UNLCK; fl.l_whence = SEEK_SET; fl.l_start = byte; fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}
/* 1: another open file description holds the byte; 0: nobody; <0: -errno. */
static inline int shm_ofd_held(int fd, int64_t byte) {
    struct flock fl = {0};
    fl.l_type = F_WRLCK; fl.l_whence = SEEK_SET; fl.l_start = byte; fl.l_len = 1;
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -errno;
    return fl.l_type != F_UNLCK;
}
#endif
