//! Reading the programs' maps without blinding the probes.
//!
//! A bpf() call that copies a map value in or out (lookup, update, delete) raises the
//! CPU's `bpf_prog_active` while it copies (kernel/bpf/syscall.c: `bpf_map_copy_value`,
//! `bpf_map_update_value` and `map_delete_elem` call `bpf_disable_instrumentation`), and a
//! kprobe program does not run on a CPU whose `bpf_prog_active` is raised
//! (`trace_call_bpf`, kernel/trace/bpf_trace.c): the call it would have seen is lost, and
//! counted as a miss of the program since 6.7. `bpf_disable_instrumentation` only
//! disables migration, not preemption, so on a preemptible kernel (`CONFIG_PREEMPT`,
//! `CONFIG_PREEMPT_LAZY` as in Debian's 7.x kernels, or `preempt=full`) the reading thread
//! can be preempted inside that window, and the task run next on that CPU, often the
//! traced server, sends unseen. Measured on 7.3.4 under QEMU: 14 entries (7 `tcp_sendmsg`,
//! 7 `tcp_sendmsg_locked`) and 12 returns lost in 10 s of continuous reads, none in 10 s
//! without reads
//! (`attach::aggregates::tests::reading_the_maps_makes_the_kernel_skip_no_calls`).
//!
//! A real-time task is not preempted by normal tasks, so map accesses run as one
//! (`SCHED_FIFO`, the lowest priority) in short stretches ([`Stretches`]): the traced
//! servers wait at most one stretch on the reader's CPU, which they would spend on the
//! reader anyway. Where real-time scheduling is refused (no `CAP_SYS_NICE`, a cgroup
//! without real-time budget), maps are read as before and the rare misses stay counted.

use std::sync::atomic::{AtomicBool, Ordering};

/// Map accesses per real-time stretch: a lookup of a per-CPU value costs 1-2 µs on real
/// hardware, so a stretch holds the CPU for about 100 µs at most.
pub const STRETCH: u32 = 64;

/// Set once real-time scheduling was refused: not asked for again.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// A `sched_param` of this priority. Built field by field: musl's has private padding
/// fields, so a struct literal does not compile there (the static binary).
fn sched_param(priority: libc::c_int) -> libc::sched_param {
    // SAFETY: sched_param is plain integers (and padding on musl); all zeros is valid.
    let mut p: libc::sched_param = unsafe { std::mem::zeroed() };
    p.sched_priority = priority;
    p
}

/// The calling thread runs as a real-time task until this is dropped (then as before).
/// Does nothing where the thread already is real-time or the kernel refuses.
pub struct Unpreempted {
    restore: Option<(libc::c_int, libc::sched_param)>,
}

impl Unpreempted {
    pub fn new() -> Unpreempted {
        let none = Unpreempted { restore: None };
        if REFUSED.load(Ordering::Relaxed) {
            return none;
        }
        // SAFETY: reads the calling thread's policy; no memory is passed.
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy < 0
            || !matches!(
                policy & !libc::SCHED_RESET_ON_FORK,
                libc::SCHED_OTHER | libc::SCHED_BATCH | libc::SCHED_IDLE
            )
        {
            // Already real-time (or deadline): nothing normal can preempt it.
            return none;
        }
        let mut old = sched_param(0);
        // SAFETY: `old` is a valid sched_param for the call to fill.
        if unsafe { libc::sched_getparam(0, &mut old) } != 0 {
            return none;
        }
        let rt = sched_param(1);
        // SAFETY: `rt` is a valid sched_param, only read by the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) } != 0 {
            if !REFUSED.swap(true, Ordering::Relaxed) {
                log::debug!(
                    "maps are read as a normal task (real-time scheduling refused: {}): on a preemptible kernel a few calls may go unseen, and are counted",
                    std::io::Error::last_os_error()
                );
            }
            return none;
        }
        Unpreempted {
            restore: Some((policy, old)),
        }
    }

    /// Whether the thread runs as a real-time task because of this guard.
    #[cfg(test)]
    pub fn active(&self) -> bool {
        self.restore.is_some()
    }
}

impl Drop for Unpreempted {
    fn drop(&mut self) {
        if let Some((policy, old)) = self.restore.take() {
            // SAFETY: `old` is the sched_param read from this thread, only read by the
            // call. The nice value is kept by the kernel across the change.
            let _ = unsafe { libc::sched_setscheduler(0, policy, &old) };
        }
    }
}

/// Many map accesses in a row, as real-time stretches of at most [`STRETCH`] accesses
/// with a chance to be preempted between them.
pub struct Stretches {
    guard: Option<Unpreempted>,
    left: u32,
}

impl Stretches {
    pub fn new() -> Stretches {
        Stretches {
            guard: None,
            left: 0,
        }
    }

    /// Call before each map access.
    pub fn step(&mut self) {
        if self.left == 0 {
            // Back to normal first: this is where a waiting task may run.
            self.guard = None;
            self.guard = Some(Unpreempted::new());
            self.left = STRETCH;
        }
        self.left -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: as in Unpreempted::new.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// The guard restores the thread's policy, and does nothing without permission. Runs
    /// in a thread of its own so that the test harness's thread is untouched.
    #[test]
    fn the_guard_restores_the_policy() {
        let t = std::thread::spawn(|| {
            let before = policy();
            {
                let g = Unpreempted::new();
                if g.active() {
                    assert_eq!(policy(), libc::SCHED_FIFO);
                } else {
                    assert_eq!(policy(), before);
                }
            }
            assert_eq!(policy(), before);
            let mut s = Stretches::new();
            for _ in 0..(2 * STRETCH + 1) {
                s.step();
            }
            drop(s);
            assert_eq!(policy(), before);
        });
        assert!(t.join().is_ok());
    }
}
