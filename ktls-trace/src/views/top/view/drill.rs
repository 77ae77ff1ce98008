//! The drill-down: one process's connections (with what sock_diag says of their kernel
//! TLS), its threads, and its last minute as charts.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row, Sparkline, Table},
};

use super::{DrillFacts, format};
use crate::{
    event::sock_hex,
    views::top::model::{ProcRow, Snapshot},
};

pub fn draw(frame: &mut Frame, area: Rect, snap: &Snapshot, pid: u32, drill: &DrillFacts) {
    let Some(r) = snap.procs.iter().find(|r| r.pid == pid) else {
        frame.render_widget(
            Paragraph::new(format!(
                "process {pid} has exited or had no traced activity for a minute (Esc goes back)"
            ))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" PID {pid} ")),
            ),
            area,
        );
        return;
    };
    let charts_h = match area.height {
        h if h >= 34 => 15,
        h if h >= 20 => 9,
        _ => 3,
    };
    let [conn_area, chart_area] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(charts_h)]).areas(area);
    let title = format!(
        " PID {} {} - {} - payload {}/s, TLS in {}/s, TLS out {}/s, {} rec/s, zero-copy {} ",
        r.pid,
        r.comm,
        r.path.map_or("-", |p| p.label()),
        format::bytes(r.payload_bps),
        format::bytes(r.ktls_plaintext_bps),
        format::bytes(r.ciphertext_bps),
        r.records_ps.map_or("-".into(), format::count),
        r.zero_copy
            .map_or("-".into(), |z| format!("{:.0}%", z * 100.0)),
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(conn_area);
    frame.render_widget(block, conn_area);
    let [threads_area, inner] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
    frame.render_widget(Paragraph::new(threads_line(r)), threads_area);
    let show_sessions = !drill.lookup_available;
    let [conns_area, sess_area] = if show_sessions {
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(inner)
    } else {
        Layout::vertical([Constraint::Min(1), Constraint::Length(0)]).areas(inner)
    };
    let hdr = Row::new(["SOCKET", "PEER", "TLS", "PAYLOAD/s", "TLS-OUT/s", "PATH"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = r
        .conns
        .iter()
        .map(|c| {
            let f = drill.conns.get(&c.sock);
            let peer = f
                .and_then(|f| f.endpoints)
                .and_then(|e| e.peer)
                .map_or("?".to_string(), |p| p.to_string());
            let tls = f
                .and_then(|f| f.tls.as_ref())
                .map_or("-".to_string(), |t| t.summary());
            Row::new([
                sock_hex(c.sock),
                peer,
                tls,
                format::bytes(c.payload_bps),
                format::bytes(c.ciphertext_bps),
                c.path.map_or("-", |p| p.label()).to_string(),
            ])
            .style(if c.active {
                Style::default()
            } else {
                Style::default().fg(Color::DarkGray)
            })
        })
        .collect();
    let conn_table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(22),
            Constraint::Length(26),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Min(10),
        ],
    )
    .header(hdr);
    frame.render_widget(conn_table, conns_area);
    if show_sessions {
        draw_sessions(frame, sess_area, drill);
    }
    draw_charts(frame, chart_area, r);
}

/// "threads: wrk:worker_1 (502) 700/s, wrk:worker_0 (501) 300/s".
fn threads_line(r: &ProcRow) -> String {
    if r.threads.is_empty() {
        return "threads: none sent payload in the last minute".into();
    }
    let parts: Vec<String> = r
        .threads
        .iter()
        .map(|t| format!("{} ({}) {}/s", t.comm, t.tid, format::bytes(t.payload_bps)))
        .collect();
    format!("threads: {}", parts.join(", "))
}

fn draw_sessions(frame: &mut Frame, area: Rect, drill: &DrillFacts) {
    let title = "sockets of this process (sock_diag; not every socket id above has addresses)";
    let mut lines = vec![Line::from(Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    ))];
    if let Some(e) = &drill.diag_error {
        lines.push(Line::from(format!("sock_diag: {e}")));
    } else if drill.sessions.is_empty() {
        lines.push(Line::from("no TCP connections open"));
    }
    for s in &drill.sessions {
        let tls = match (&s.tls, &s.ulp) {
            (Some(t), _) => format!("{}  rx {}", t.summary(), t.rx_name()),
            (None, Some(u)) => format!("ULP {u}"),
            (None, None) => "no kernel TLS".to_string(),
        };
        lines.push(Line::from(format!(
            "{:<22} -> {:<22} {tls}",
            s.local, s.peer
        )));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_charts(frame: &mut Frame, area: Rect, r: &ProcRow) {
    type Series = (&'static str, Vec<u64>, fn(f64) -> String);
    let series: [Series; 3] = [
        (
            "payload B/s",
            r.history.iter().map(|s| s.payload_bps as u64).collect(),
            format::bytes,
        ),
        (
            "TLS out B/s",
            r.history.iter().map(|s| s.ciphertext_bps as u64).collect(),
            format::bytes,
        ),
        (
            "records/s",
            r.history
                .iter()
                .map(|s| s.records_ps.round() as u64)
                .collect(),
            format::count,
        ),
    ];
    let n = series.len() as u32;
    let areas = Layout::vertical((0..n).map(|_| Constraint::Ratio(1, n))).split(area);
    for ((name, data, fmt), a) in series.into_iter().zip(areas.iter()) {
        let now = data.last().copied().unwrap_or(0);
        let max = data.iter().copied().max().unwrap_or(0);
        // The newest samples, as many as fit.
        let w = usize::from(a.width.saturating_sub(2));
        let shown = &data[data.len().saturating_sub(w)..];
        let title = format!(
            " {name} over the last minute: now {}, max {} ",
            fmt(now as f64),
            fmt(max as f64)
        );
        let spark = Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title(title))
            .data(shown.iter().copied())
            .style(Style::default().fg(Color::Green));
        frame.render_widget(spark, *a);
    }
}
