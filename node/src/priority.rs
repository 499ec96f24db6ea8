//! Lower CPU priority (Linux nice levels) for work no client is waiting on, so that it
//! yields the cores to work one is: client-sized reads (`core::ReadPool`) and the storage
//! engine's flushes and compactions (`storage`). Only ever lowering a priority needs no
//! privilege; if the OS refuses, the thread runs at the normal priority.

/// How much less CPU weight background work gets than the rest of the node: each nice level
/// is ~20 % less weight, so +10 is about a tenth of a normal thread's.
pub const BACKGROUND: i32 = 10;
/// The lowest priority Linux has.
pub const MAX_NICENESS: i32 = 19;

/// Lowers the calling thread's priority by `by` nice levels. Threads it creates afterwards
/// start at the lowered priority: Linux's nice value is per thread and inherited.
pub fn lower_current_thread(by: i32) {
    let niceness = (current_niceness() + by).min(MAX_NICENESS);
    // SAFETY: a plain system call on the calling thread's own id; no memory is shared.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), niceness) };
    if result != 0 {
        tracing::debug!("could not lower a background thread's priority");
    }
}

/// The calling thread's nice value.
pub fn current_niceness() -> i32 {
    // SAFETY: a plain system call on the calling thread's own id. It may return -1 as a
    // niceness; an error (impossible for one's own thread) would read as -1 too.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, thread_id()) }
}

fn thread_id() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    libc::id_t::try_from(tid).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_and_the_threads_it_starts_run_at_the_lower_priority() {
        let base = current_niceness();
        let (own, child) = std::thread::spawn(|| {
            lower_current_thread(BACKGROUND);
            let child = std::thread::spawn(current_niceness).join().expect("child");
            (current_niceness(), child)
        })
        .join()
        .expect("thread");
        let want = (base + BACKGROUND).min(MAX_NICENESS);
        assert_eq!((own, child), (want, want));
        assert_eq!(
            current_niceness(),
            base,
            "the caller's own priority is unchanged"
        );
    }
}
