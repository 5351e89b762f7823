//! Giving freed memory back to the system.
//!
//! The start (the config, the OpenAPI document, loading each plugin and its first
//! resync) and a reload allocate much that is freed at once; glibc's allocator keeps
//! such free pages in its heaps, where they count in the server's resident size until
//! reused. After those moments they are returned (`malloc_trim`), which is what keeps
//! an idle server's footprint to what it actually holds.

/// Returns the allocator's free pages to the system (glibc; elsewhere nothing).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(3) only walks the allocator's own free lists; it takes
        // the allocator's locks and may be called from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
