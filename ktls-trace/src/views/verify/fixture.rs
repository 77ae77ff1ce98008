//! Recorded event streams: what `verify --record FILE` writes (the judged events of one
//! traced load and what the load reported), and what the replay tests read back. The file
//! is JSON lines: one header object, then one `trace --json` event per line.

use std::io::Write as _;

use serde::{Deserialize, Serialize};

use super::judge::Served;
use crate::{event::TraceEvent, jsonl::JsonLines, load::Mode};

/// The first line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    /// `uname -r` of the kernel it was recorded on.
    pub kernel: String,
    pub mode: Mode,
    /// The traced server's pid.
    pub pid: u32,
    pub served: Served,
}

/// Writes a recording.
pub fn write(
    path: &std::path::Path,
    kernel: &str,
    mode: Mode,
    pid: u32,
    served: &Served,
    events: &[TraceEvent],
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let header = Header {
        kernel: kernel.to_string(),
        mode,
        pid,
        served: served.clone(),
    };
    serde_json::to_writer(&mut out, &serde_json::json!({ "fixture": header }))?;
    out.write_all(b"\n")?;
    let mut lines = JsonLines::new();
    for e in events {
        lines.push(e);
        if lines.is_full() {
            lines.write_to(&mut out)?;
        }
    }
    lines.write_to(&mut out)?;
    out.flush()
}

/// Reads a recording back.
#[cfg(test)]
pub fn read(text: &str) -> Result<(Header, Vec<TraceEvent>), String> {
    let mut lines = text.lines();
    let first: serde_json::Value =
        serde_json::from_str(lines.next().ok_or("empty recording")?).map_err(|e| e.to_string())?;
    let header: Header =
        serde_json::from_value(first["fixture"].clone()).map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        if let Some(e) = crate::event::parse_json_line(line).map_err(|e| e.to_string())? {
            events.push(e);
        }
    }
    Ok((header, events))
}
