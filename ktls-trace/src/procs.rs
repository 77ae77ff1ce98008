//! Processes: do the ones named on the command line exist, are they still running, and
//! what are they called.

use std::fs;

/// A command-line mistake: the binary exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("no process with PID {0}")]
    NoSuchProcess(u32),
    #[error("{0}")]
    Other(String),
}

/// Reads "Tgid:" from /proc/PID/status: a thread id given by mistake maps to its process.
fn tgid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Checks every PID exists and returns the process ids (tgids) to filter on, deduplicated.
pub fn resolve_pids(pids: &[u32]) -> Result<Vec<u32>, UsageError> {
    let mut out = Vec::new();
    for &pid in pids {
        if pid == 0 {
            return Err(UsageError::NoSuchProcess(0));
        }
        let tgid = match tgid_of(pid) {
            Some(t) if alive(t) => t,
            _ => return Err(UsageError::NoSuchProcess(pid)),
        };
        if !out.contains(&tgid) {
            out.push(tgid);
        }
    }
    Ok(out)
}

/// Is the process running (present and not a zombie)?
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (comm) STATE ..." -- comm may contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A process's name (its main thread's `comm`), while it exists.
pub fn process_name(pid: u32) -> Option<String> {
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_resolves_and_has_a_name() {
        let me = std::process::id();
        assert!(alive(me));
        let name = process_name(me).expect("our own name");
        assert!(!name.is_empty() && !name.contains('\n'), "{name:?}");
        assert_eq!(process_name(4_194_305), None);
        assert_eq!(resolve_pids(&[me, me]).unwrap(), vec![me]);
    }

    #[test]
    fn missing_pid_is_a_usage_error() {
        // PID_MAX_LIMIT is 4194304: this one cannot exist.
        assert_eq!(
            resolve_pids(&[4_194_305]),
            Err(UsageError::NoSuchProcess(4_194_305))
        );
        assert_eq!(resolve_pids(&[0]), Err(UsageError::NoSuchProcess(0)));
        assert!(!alive(4_194_305));
    }

    #[test]
    fn zombie_is_not_alive() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait for it to exit without reaping it.
        for _ in 0..200 {
            if !alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!alive(pid), "an exited, unreaped child must count as gone");
        drop(child);
    }
}
