//! The process's allocator: jemalloc instead of glibc's malloc.
//!
//! Under the 64-client append load glibc spent about a quarter of the
//! server's CPU in `malloc`, `free` and `malloc_consolidate` (a profile in
//! BENCHMARKS.md): the writer, the gRPC workers and the index thread hand
//! buffers to each other, which glibc's per-thread arenas handle badly.
//! jemalloc gave 23–40 % more events a second, restarts about a third
//! faster, and a smaller resident set than glibc on the same runs
//! (mimalloc was faster still but held about a quarter more memory).
//!
//! Freed memory must go back to the system after a burst (a flood of large
//! requests ends; tests/resource_limits.rs): jemalloc's background thread
//! purges dirty pages after `dirty_decay_ms` even when the process is idle,
//! which its default (purging only while allocating) would not.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at its first allocation.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static libc::c_char> = Some(
    // SAFETY: the first byte of a C string literal, which lives for the
    // whole program; jemalloc reads up to its NUL.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);
