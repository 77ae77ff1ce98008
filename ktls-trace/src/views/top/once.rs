//! `top --once`: trace for one interval, print one snapshot as plain text (or JSON) and
//! exit (like `top -b -n 1`), for scripts and for output that is not a terminal. With
//! `--load`, the interval starts once the load serves: under emulation its start alone can
//! take longer than an interval.

use std::{io::Write as _, time::Duration};

use serde::Serialize;

use super::{
    load_child::LoadChild,
    model::{Model, Snapshot},
    view::{
        Column, Header, ViewState,
        columns::text_row,
        header::{self, text},
        visible_rows,
    },
};
use crate::{
    clock,
    session::{Session, Update},
};

/// How long `--once --load` waits for the load to serve.
const LOAD_START_LIMIT: Duration = Duration::from_secs(120);

/// The snapshot as text: the header lines, then one line per process (sorted by payload
/// bytes/s, busiest first) with every column.
pub fn render_text(snap: &Snapshot, h: &Header) -> String {
    let mut out = String::new();
    for l in header::lines(snap, h, false) {
        out.push_str(&text(&l));
        out.push('\n');
    }
    if snap.drops_total > 0 {
        out.push_str(&format!(
            "WARNING: {} events were dropped in the kernel ({}); rates are low\n",
            snap.drops_total, snap.drop_causes
        ));
    }
    out.push('\n');
    out.push_str(&text_row(
        Column::ALL.iter().map(|c| (*c, c.title().to_string())),
    ));
    out.push('\n');
    let rows = visible_rows(snap, &ViewState::default());
    if rows.is_empty() {
        out.push_str("(no TCP/TLS send activity in this interval)\n");
    }
    for r in rows {
        out.push_str(&text_row(Column::ALL.iter().map(|c| (*c, c.cell(r)))));
        out.push('\n');
    }
    out
}

/// The `--json` form: the header's facts and the snapshot (docs/top.md).
#[derive(Serialize)]
struct Json<'a> {
    kernel: &'a str,
    mode: &'a str,
    interval_s: f64,
    status: Option<&'a str>,
    tls_stat: Option<&'a std::collections::BTreeMap<String, u64>>,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
}

pub fn render_json(snap: &Snapshot, h: &Header) -> String {
    let j = Json {
        kernel: &h.kernel,
        mode: &h.mode,
        interval_s: h.interval_s,
        status: h.status.as_deref(),
        tls_stat: h.tls_stat.as_ref(),
        snapshot: snap,
    };
    match serde_json::to_string(&j) {
        Ok(s) => s + "\n",
        Err(e) => format!("{{\"error\": \"{e}\"}}\n"),
    }
}

/// Traces one interval (after the load serves, with `--load`) and prints the snapshot.
pub async fn run(
    mut s: Session,
    mut header: Header,
    mut load: Option<LoadChild>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(l) = &mut load {
        let serving = l.serving(LOAD_START_LIMIT);
        tokio::pin!(serving);
        loop {
            tokio::select! {
                r = &mut serving => {
                    r?;
                    break;
                }
                u = s.next() => {
                    if let Update::Stop(_) = u? {
                        return Ok(());
                    }
                }
            }
        }
    }
    let start = clock::now_ns();
    // What the kernel added up before the interval is not part of it.
    s.read_aggregates()?;
    let mut model = Model::new(s.rules(), start);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(header.interval_s);
    loop {
        tokio::select! {
            u = s.next() => match u? {
                Update::Events(v) => ingest_from(&mut model, &v, start),
                Update::Stop(_) => break,
                Update::Notices(_) | Update::Tick => {}
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    ingest_from(&mut model, &s.drain_now(), start);
    model.ingest_aggregates(&s.read_aggregates()?);
    model.set_counts(s.counts());
    let snap = model.close_window(clock::now_ns());
    header.tls_stat = crate::kernel::read_tls_stat();
    if let Some(l) = &mut load {
        l.check();
        header.status = Some(l.describe());
    }
    // Detach the probes and stop the load before printing.
    drop(s);
    drop(load);
    let text = if json {
        render_json(&snap, &header)
    } else {
        render_text(&snap, &header)
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head -1`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// Events of the interval only (those still in the ring buffer from before it are not).
fn ingest_from(model: &mut Model, events: &[crate::event::TraceEvent], start: u64) {
    for e in events.iter().filter(|e| e.ts_ns >= start) {
        model.ingest(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        classify::Path,
        views::top::view::tests::{header, proc_row, snapshot},
    };

    #[test]
    fn text_snapshot() {
        let snap = Snapshot {
            drops_total: 3,
            drops_window: 3,
            drop_causes: "returns missed 3".into(),
            procs: vec![
                proc_row(7, "small", Path::Plain, 10.0),
                proc_row(8, "ktls-workload", Path::KtlsSendfile, 5e6),
            ],
            ..snapshot()
        };
        let h = Header {
            interval_s: 2.0,
            tls_stat: None,
            status: Some("load: ktls-sendfile running (pid 9)".into()),
            ..header()
        };
        let t = render_text(&snap, &h);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("kernel 6.12.57+deb12-cloud-amd64"), "{t}");
        assert!(lines[0].contains("interval 2.00s") && lines[0].contains("dropped 3"));
        assert!(t.contains("mode: full mode: kprobes"));
        assert!(t.contains("tls_stat: not available"));
        assert!(t.contains("load: ktls-sendfile running"));
        assert!(t.contains("WARNING: 3 events were dropped in the kernel (returns missed 3)"));
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

    #[test]
    fn json_snapshot() {
        let v: serde_json::Value =
            serde_json::from_str(&render_json(&snapshot(), &header())).unwrap();
        assert_eq!(v["kernel"], "6.12.57+deb12-cloud-amd64");
        assert_eq!(v["events"], 1234);
        assert_eq!(v["drops_total"], 0);
        let nginx = v["procs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["comm"] == "nginx")
            .unwrap();
        assert_eq!(nginx["path"], "ktls-sendfile");
        assert_eq!(nginx["zero_copy"], 1.0);
        assert_eq!(nginx["threads"][0]["comm"], "nginx-worker");
    }
}
