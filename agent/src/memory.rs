//! Keeping the agent's resident memory small: a board may have 512 MB in all.

/// Caps glibc's malloc at one arena. By default every thread that allocates may get an arena of
/// its own (up to 8 per core), and the blocking pool's threads come and go: each arena keeps
/// freed memory resident. The agent allocates little, and rarely from several threads at once,
/// so one arena is enough. Call it before any thread starts.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator parameters.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok != 1 {
        tracing::debug!("mallopt(M_ARENA_MAX) refused; malloc keeps its default arenas");
    }
}
