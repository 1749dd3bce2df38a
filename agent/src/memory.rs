//! Host-memory hygiene for a process that loads the CUDA libraries.
//!
//! The driver, cuBLAS/cuBLASLt and cuFFT make many large, short-lived host
//! allocations while a context, handles and plans are set up, from whichever
//! thread sets them up. glibc gives every thread that contends for the heap
//! its own arena (up to 8 × cores), and freed start-up memory stays in those
//! arenas as anonymous RSS, which counts against the pod's memory limit.
//! Two arenas are plenty for an agent whose hot path allocates almost
//! nothing, and trimming once start-up is over hands the rest back.
#![allow(unsafe_code)]

/// Caps glibc's malloc arenas at `n` (call before threads start allocating).
/// Returns false where the C library refused (or is not glibc).
pub fn limit_arenas(n: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX takes a
        // positive count.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n.max(1)) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// Returns freed heap memory to the kernel (after start-up: contexts,
/// handles, plans and self-tests are done).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of each heap
    // and in free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_limit_is_accepted_by_glibc() {
        assert!(limit_arenas(2));
        trim();
    }
}
