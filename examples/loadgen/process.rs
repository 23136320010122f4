//! What the load generator measures about its own process: CPU pinning
//! (`--pin on`) and a count of heap allocations.
//!
//! Pinning: `sched_setaffinity` on the process's main thread before any
//! runtime starts, so every thread it creates afterwards (tokio's worker and
//! blocking threads) inherits the one CPU. The client takes CPU 0 and the
//! backends' process CPU 1, each with one tokio worker: on a 2-core machine
//! the client then pays for its own work alone, and its cost per call
//! decides its throughput.
//!
//! Allocations: the global allocator is the system's, counted; a window's
//! allocations divided by its calls is the client's allocations per call
//! (the load generator's own per-call allocations included, the same for
//! every client: one `String` for the request's `data`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting every allocation (reallocations count:
/// a growing buffer is an allocation the caller made).
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (and reallocations) made by this process so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Pins the calling thread, and every thread it starts afterwards, to `cpu`.
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other(format!("no CPU {cpu}")));
    }
    // SAFETY: an all-zero `cpu_set_t` is the empty set; CPU_SET writes one
    // bit inside it (cpu is below CPU_SETSIZE); sched_setaffinity only reads
    // the set we hand it, with its exact size.
    let status = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if status != 0 {
        return Err(std::io::Error::other(format!(
            "pinning to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Callgrind's client requests (`valgrind/callgrind.h`): `CALLGRIND_ZERO_STATS`
/// when a measurement window opens and `CALLGRIND_DUMP_STATS` when it
/// closes, so that a run under `valgrind --tool=callgrind` writes the
/// instructions of the window alone (`benches/callgrind.sh`). Outside
/// valgrind the instruction sequence does nothing.
pub mod callgrind {
    /// `VG_USERREQ_TOOL_BASE('C', 'T')`: `VG_USERREQ__DUMP_STATS`.
    const DUMP_STATS: u64 = (b'C' as u64) << 24 | (b'T' as u64) << 16;
    const ZERO_STATS: u64 = DUMP_STATS + 1;

    /// Zeroes callgrind's counts.
    pub fn zero() {
        request(ZERO_STATS);
    }

    /// Writes callgrind's counts so far to the next dump file.
    pub fn dump() {
        request(DUMP_STATS);
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn request(code: u64) {
        let args: [u64; 6] = [code, 0, 0, 0, 0, 0];
        // SAFETY: valgrind's "special instruction preamble": four rotations
        // of rdi by 3 + 13 + 61 + 51 = 128 bits (rdi unchanged) and an
        // exchange of rbx with itself, a no-op on a real CPU; under valgrind
        // it performs the request described by `args`, which it only reads,
        // and writes its result to rdx (declared clobbered).
        unsafe {
            std::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                in("rax") args.as_ptr(),
                inout("rdx") 0u64 => _,
                out("rdi") _,
            );
        }
    }

    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    fn request(_code: u64) {}
}
