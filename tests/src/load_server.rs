//! `ktls-trace load --server-only` as a child process, for tests that run the client
//! apart (load's own tests, and export's, which needs one server across two clients).

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

/// A child process killed on drop, with its stdout lines on a channel.
pub struct LoadServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<thread::JoinHandle<()>>,
}

impl LoadServer {
    /// `ktls-trace load --server-only ARGS`.
    pub fn start(args: &[&str]) -> LoadServer {
        let mut child = Command::new(crate::bin("ktls-trace"))
            .arg("load")
            .arg("--server-only")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ktls-trace load --server-only");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LoadServer {
            child,
            lines: rx,
            reader: Some(reader),
        }
    }

    /// Waits for the ready line; returns it parsed.
    pub fn ready(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
                assert_eq!(v["event"], "ready", "{v}");
                v
            }
            Err(_) => {
                let _ = self.child.kill();
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the server printed no ready line; stderr: {err}");
            }
        }
    }

    /// Waits for the exit (at most `secs`); returns the exit code and the last JSON line.
    pub fn finish(mut self, secs: u64) -> (Option<i32>, Value, String) {
        let mut waited = 0;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if waited >= secs * 10 {
                let _ = self.child.kill();
                panic!("the server did not exit within {secs} s");
            }
            thread::sleep(Duration::from_millis(100));
            waited += 1;
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines: Vec<String> = self.lines.try_iter().collect();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        eprintln!("server stdout: {lines:?}\nserver stderr: {err}");
        let last = lines
            .iter()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("no report line");
        (
            status.code(),
            serde_json::from_str(last).expect("report JSON"),
            err,
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for LoadServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `listen` address of a ready line.
pub fn listen_addr(ready: &Value) -> String {
    ready["listen"].as_str().expect("listen").to_string()
}
