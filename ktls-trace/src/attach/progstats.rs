//! What the kernel counts about each of our loaded programs (`struct bpf_prog_info`):
//! how often it ran and for how long (while run-time statistics are enabled), and how
//! often it did not run at all because another BPF program, or a bpf() syscall that
//! touches maps, held the CPU (`recursion_misses`, 5.12+). aya 0.14's `ProgramInfo`
//! does not expose the last, so the info is read here with the raw syscall.

use std::os::fd::{AsRawFd as _, BorrowedFd};

/// `BPF_OBJ_GET_INFO_BY_FD` (include/uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_prog_info` up to `recursion_misses` (uapi, append-only: the
/// offsets never change). The kernel copies at most what it knows and writes back how
/// much that was.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    /// type .. prog_tags: the fields before the statistics, not read here.
    _before: [u64; 24],
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
}

const _: () = assert!(std::mem::offset_of!(ProgInfoHead, run_time_ns) == 192);
const _: () = assert!(std::mem::offset_of!(ProgInfoHead, recursion_misses) == 208);

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// One program's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    /// Nanoseconds spent in the program, while run-time statistics are on.
    pub run_time_ns: u64,
    /// Runs counted while run-time statistics are on.
    pub run_cnt: u64,
    /// Times it did not run: another BPF program or a map-touching bpf() call held the
    /// CPU. None before 5.12 (not counted there).
    pub recursion_misses: Option<u64>,
}

/// Reads a loaded program's counters (None: the kernel refused).
pub fn read(fd: BorrowedFd<'_>) -> Option<ProgStats> {
    let mut info = ProgInfoHead::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
    };
    // SAFETY: `attr` is a valid BPF_OBJ_GET_INFO_BY_FD argument whose `info` points to a
    // writable buffer of `info_len` bytes that outlives the call; the kernel writes at
    // most that many bytes into it and updates `info_len`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return None;
    }
    let known = attr.info_len as usize;
    let has = |end: usize| known >= end;
    Some(ProgStats {
        run_time_ns: if has(200) { info.run_time_ns } else { 0 },
        run_cnt: if has(208) { info.run_cnt } else { 0 },
        recursion_misses: has(216).then_some(info.recursion_misses),
    })
}

/// `BPF_ENABLE_STATS` (include/uapi/linux/bpf.h, Linux 5.8, commit d46edd671a14).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME`: the one kind of statistics the kernel has.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Why the kernel would not count run time.
#[derive(Debug, thiserror::Error)]
pub enum RunStatsError {
    #[error(
        "this kernel cannot count the run time of BPF programs (BPF_ENABLE_STATS needs Linux 5.8)"
    )]
    Unsupported,
    #[error("counting the run time of BPF programs needs CAP_SYS_ADMIN")]
    NotPermitted,
    #[error("the kernel refused to count the run time of BPF programs: {0}")]
    Other(std::io::Error),
}

/// While this lives, the kernel counts the runs and run time of every BPF program of the
/// system (`run_cnt`, `run_time_ns`), ours included: two clock reads more per program
/// run, which is why it is on only when asked (`trace --cost`). Several holders may
/// exist at once (the kernel counts them; `kernel.bpf_stats_enabled` is another);
/// dropping this one closes its fd and ends only its own hold.
#[derive(Debug)]
pub struct RunStats(#[allow(dead_code)] std::os::fd::OwnedFd);

/// Asks the kernel to count run time until the returned hold is dropped.
pub fn count_run_time() -> Result<RunStats, RunStatsError> {
    use std::os::fd::FromRawFd as _;
    // `union bpf_attr` as BPF_ENABLE_STATS reads it: `enable_stats.type`.
    #[repr(C)]
    struct EnableStatsAttr {
        kind: u32,
    }
    let mut attr = EnableStatsAttr {
        kind: BPF_STATS_RUN_TIME,
    };
    // SAFETY: `attr` is a valid BPF_ENABLE_STATS argument of the size passed, alive for
    // the call; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &mut attr as *mut EnableStatsAttr,
            std::mem::size_of::<EnableStatsAttr>(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => RunStatsError::Unsupported,
            Some(libc::EPERM) => RunStatsError::NotPermitted,
            _ => RunStatsError::Other(e),
        });
    }
    // SAFETY: on success BPF_ENABLE_STATS returns a new file descriptor that nothing else
    // owns.
    Ok(RunStats(unsafe {
        std::os::fd::OwnedFd::from_raw_fd(rc as i32)
    }))
}
