//! `top --once`: trace for one interval, print one snapshot as plain text and exit (like
//! `top -b -n 1`), for scripts and for output that is not a terminal.

use std::io::Write as _;

use anyhow::Context as _;

use super::{
    LoadChild, Session,
    model::{Model, Snapshot},
    view::{Column, Header, ViewState, header_lines, visible_rows},
};

/// The snapshot as text: the header lines, then one line per process (sorted by payload
/// bytes/s, busiest first) with every column.
pub fn render_text(snap: &Snapshot, h: &Header) -> String {
    let mut out = String::new();
    for l in header_lines(snap, h) {
        out.push_str(&l);
        out.push('\n');
    }
    if let Some(s) = &h.status {
        out.push_str(s);
        out.push('\n');
    }
    if snap.drops_total > 0 {
        out.push_str(&format!(
            "WARNING: {} events were dropped in the kernel (ring buffer full); rates are low\n",
            snap.drops_total
        ));
    }
    out.push('\n');
    let cell = |c: Column, t: &str| {
        let w = usize::from(c.width());
        if matches!(c, Column::Comm | Column::Path) {
            format!("{t:<w$}")
        } else {
            format!("{t:>w$}")
        }
    };
    let line = |cells: Vec<String>| cells.join(" ").trim_end().to_string() + "\n";
    out.push_str(&line(
        Column::ALL.iter().map(|c| cell(*c, c.title())).collect(),
    ));
    let rows = visible_rows(snap, &ViewState::default());
    if rows.is_empty() {
        out.push_str("(no TCP/TLS send activity in this interval)\n");
    }
    for r in rows {
        out.push_str(&line(
            Column::ALL.iter().map(|c| cell(*c, &c.cell(r))).collect(),
        ));
    }
    out
}

/// Traces one interval and prints the snapshot on stdout.
pub async fn run(mut s: Session, mut load: Option<LoadChild>) -> anyhow::Result<()> {
    let stop = crate::signals::stop_signals().context("installing the SIGINT/SIGTERM handlers")?;
    tokio::pin!(stop);
    let start = super::now_ns();
    let mut model = Model::new(s.rules, start);
    model.ignore_before(start);
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs_f64(s.header.interval_s);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            r = s.tracer.next_batch(&mut batch) => {
                r?;
                model.ingest_batch(&mut batch);
            }
            _ = tokio::time::sleep_until(deadline) => break,
            () = &mut stop => break,
        }
    }
    s.tracer.drain(&mut batch);
    model.ingest_batch(&mut batch);
    model.set_drops(s.tracer.drops());
    let snap = model.close_window(super::now_ns());
    s.header.tls_stat = crate::kernel::read_tls_stat();
    if let Some(l) = &mut load {
        l.check();
        s.header.status = Some(l.describe());
    }
    // Detach the probes and stop the load before printing.
    let header = std::mem::take(&mut s.header);
    drop(s);
    drop(load);
    let text = render_text(&snap, &header);
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head -1`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::{classify::Path, model::ProcRow};

    fn row(pid: u32, comm: &str, path: Path, bps: f64) -> ProcRow {
        ProcRow {
            pid,
            comm: comm.into(),
            path: Some(path),
            active: true,
            payload_bps: bps,
            ktls_plaintext_bps: bps,
            ciphertext_bps: bps,
            records_ps: 2.0,
            mean_record: Some(16_384.0),
            sendfile_ps: 1.0,
            sendfile_p50_ns: Some(30_000),
            sendfile_p99_ns: Some(60_000),
            tls_p50_ns: None,
            tls_p99_ns: None,
            zero_copy: Some(1.0),
            conns: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn text_snapshot() {
        let snap = Snapshot {
            events: 10,
            events_ps: 10.0,
            drops_total: 3,
            drops_window: 3,
            procs: vec![
                row(7, "small", Path::Plain, 10.0),
                row(8, "ktls-workload", Path::KtlsSendfile, 5e6),
            ],
            ..Snapshot::default()
        };
        let h = Header {
            kernel: "6.1.0-1-cloud-amd64".into(),
            mode: "full mode".into(),
            interval_s: 2.0,
            status: Some("load: ktls-sendfile running (pid 9)".into()),
            ..Header::default()
        };
        let t = render_text(&snap, &h);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("kernel 6.1.0-1-cloud-amd64"), "{t}");
        assert!(lines[0].contains("interval 2.00s") && lines[0].contains("dropped 3"));
        assert!(t.contains("mode: full mode"));
        assert!(t.contains("tls_stat: not available"));
        assert!(t.contains("load: ktls-sendfile running"));
        assert!(t.contains("WARNING: 3 events were dropped"));
        let head = lines
            .iter()
            .position(|l| l.starts_with("    PID COMMAND"))
            .expect("table");
        assert!(
            lines[head].contains("PATH") && lines[head].contains("ZC%"),
            "{t}"
        );
        assert!(
            lines[head + 1].contains("ktls-workload")
                && lines[head + 1].contains("kTLS sendfile (zero-copy)")
        );
        assert!(lines[head + 1].contains("5.00M"));
        assert!(lines[head + 2].contains("small") && lines[head + 2].contains("plain"));
        let empty = render_text(&Snapshot::default(), &h);
        assert!(empty.contains("(no TCP/TLS send activity in this interval)"));
    }
}
