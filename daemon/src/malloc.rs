//! The one allocator setting Veil makes: large allocations always get their own mapping.
//!
//! Every FUSE session thread owns a zeroed receive buffer as large as the largest request
//! (fuser: 16 MiB + 4 KiB), and each mount has several session threads. Mapped fresh,
//! such a buffer costs only the pages requests are written into (a few KiB). But glibc
//! raises its mmap threshold on its own once a mapped block is freed, and from then on a
//! buffer that size comes from the heap, where `calloc` writes every byte: 16 MiB
//! resident per thread per mount, outside any budget (the guest memory test saw the
//! daemon grow by ~60 MiB per image). Setting the threshold fixes it (and turns the
//! dynamic adjustment off), so those buffers stay mapped.

/// Allocations of at least this many bytes are mapped on their own (`M_MMAP_THRESHOLD`).
pub const MMAP_THRESHOLD: i32 = 1 << 20;

/// Sets [`MMAP_THRESHOLD`] for this process. Call before mounting anything.
pub fn map_large_allocations() {
    // SAFETY: mallopt only changes the allocator's parameters; it takes no pointers.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        tracing::warn!(
            threshold = MMAP_THRESHOLD,
            "could not set the allocator's mmap threshold: FUSE buffers may stay resident"
        );
    }
}
