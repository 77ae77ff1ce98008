//! The built-in workload generator of `top --load`, as a child process: started after the
//! probes are attached, watched for the moment it serves, and stopped on every way out of
//! `top` (its `Drop`, and the kernel's parent-death signal if `top` dies without running
//! destructors).

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::load::{Mode, SERVING};

/// How long the built-in load runs (it is stopped when `top` exits).
const LOAD_DURATION_SECS: &str = "86400";

/// The built-in workload generator, running as a child process.
pub struct LoadChild {
    child: Child,
    mode: Mode,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    serving: watch::Receiver<bool>,
    exited: Option<ExitStatus>,
}

impl LoadChild {
    /// Starts `ktls-trace load --mode MODE --duration <a day>` with this same binary.
    pub fn spawn(mode: Mode) -> anyhow::Result<LoadChild> {
        let exe = std::env::current_exe().context("finding this executable for --load")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "load",
            "--mode",
            mode.name(),
            "--duration",
            LOAD_DURATION_SECS,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches only the new process; it makes
        // the kernel stop the load if top dies without running its destructors. (The
        // signal follows the spawning thread: `top` runs on the main thread, block_on.)
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .context("starting the built-in load (ktls-trace load)")?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (serving_tx, serving) = watch::channel(false);
        if let Some(err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if line.starts_with(SERVING) {
                        let _ = serving_tx.send(true);
                        continue;
                    }
                    if let Ok(mut t) = tail.lock() {
                        t.push_back(line);
                        if t.len() > 5 {
                            t.pop_front();
                        }
                    }
                }
            });
        }
        Ok(LoadChild {
            child,
            mode,
            stderr_tail,
            serving,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn last_error(&self) -> Option<String> {
        self.stderr_tail.lock().ok().and_then(|t| t.back().cloned())
    }

    /// Has the load said it serves?
    fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// Waits until the load serves (its client received the first body bytes); an error
    /// with the load's last words if it exits first or takes longer than `limit`.
    pub async fn serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            if self.is_serving() {
                return Ok(());
            }
            if let Some(msg) = self.check() {
                anyhow::bail!("the built-in load stopped before serving: {msg}");
            }
            tokio::select! {
                _ = self.serving.changed() => {}
                _ = poll.tick() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    anyhow::bail!("the built-in load did not serve within {} s", limit.as_secs());
                }
            }
        }
    }

    /// Checks whether the load exited; returns a message the first time it has.
    pub fn check(&mut self) -> Option<String> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                // Give the stderr reader a moment to catch the last line.
                std::thread::sleep(Duration::from_millis(50));
                Some(self.describe())
            }
            _ => None,
        }
    }

    /// "load: ktls-sendfile running (pid 123)".
    pub fn describe(&self) -> String {
        match self.exited {
            None if self.is_serving() => {
                format!("load: {} running (pid {})", self.mode, self.pid())
            }
            None => format!("load: {} starting (pid {})", self.mode, self.pid()),
            Some(status) => match self.last_error() {
                Some(e) => format!("load: {} exited ({status}): {e}", self.mode),
                None => format!("load: {} exited ({status})", self.mode),
            },
        }
    }
}

impl Drop for LoadChild {
    fn drop(&mut self) {
        if self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first, so the load can close its connections; then SIGKILL.
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
