//! Drawing: everything on screen comes from a [`Snapshot`], the [`Header`] facts and the
//! [`ViewState`] (sort, filter, selection, drill-down, help). No I/O happens here, so the
//! rendering tests draw synthetic snapshots into ratatui's `TestBackend`.

use std::collections::{BTreeMap, HashMap};

use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
};

use super::{
    conns::ConnFacts,
    model::{ProcRow, Snapshot},
};
use crate::{event::sock_hex, sockdiag::DiagSocket};

/// Smallest terminal the view draws into.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;

/// The sortable columns of the process table, in screen order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Pid,
    Comm,
    Path,
    Payload,
    TlsIn,
    TcpOut,
    Records,
    MeanRecord,
    Sendfile,
    SendfileP50,
    SendfileP99,
    TlsP50,
    TlsP99,
    ZeroCopy,
}

impl Column {
    pub const ALL: [Column; 14] = [
        Column::Pid,
        Column::Comm,
        Column::Path,
        Column::Payload,
        Column::TlsIn,
        Column::TcpOut,
        Column::Records,
        Column::MeanRecord,
        Column::Sendfile,
        Column::SendfileP50,
        Column::SendfileP99,
        Column::TlsP50,
        Column::TlsP99,
        Column::ZeroCopy,
    ];

    pub const fn title(self) -> &'static str {
        match self {
            Column::Pid => "PID",
            Column::Comm => "COMMAND",
            Column::Path => "PATH",
            Column::Payload => "PAYLOAD/s",
            Column::TlsIn => "TLS-IN/s",
            Column::TcpOut => "TLS-OUT/s",
            Column::Records => "REC/s",
            Column::MeanRecord => "AVG-REC",
            Column::Sendfile => "SF/s",
            Column::SendfileP50 => "SF-p50",
            Column::SendfileP99 => "SF-p99",
            Column::TlsP50 => "TLS-p50",
            Column::TlsP99 => "TLS-p99",
            Column::ZeroCopy => "ZC%",
        }
    }

    /// What the column means (help overlay, docs/top.md).
    pub const fn meaning(self) -> &'static str {
        match self {
            Column::Pid => "process id",
            Column::Comm => "command name",
            Column::Path => "path carrying most payload bytes",
            Column::Payload => "payload bytes/s (all paths)",
            Column::TlsIn => "plaintext bytes/s into kernel TLS",
            Column::TcpOut => "ciphertext bytes/s kernel TLS pushed into TCP",
            Column::Records => "kernel TLS records/s",
            Column::MeanRecord => "mean plaintext bytes per record",
            Column::Sendfile => "sendfile calls/s",
            Column::SendfileP50 => "sendfile latency, median",
            Column::SendfileP99 => "sendfile latency, 99th percentile",
            Column::TlsP50 => "tls_sw send latency, median",
            Column::TlsP99 => "tls_sw send latency, 99th percentile",
            Column::ZeroCopy => "share of payload through the kTLS splice path",
        }
    }

    pub const fn width(self) -> u16 {
        match self {
            Column::Pid => 7,
            Column::Comm => 15,
            Column::Path => 25,
            // Room for the title plus the sort arrow.
            Column::Payload | Column::TcpOut => 10,
            Column::TlsIn => 9,
            Column::Sendfile | Column::Records => 7,
            Column::ZeroCopy => 4,
            _ => 8,
        }
    }

    /// Lower is more important: columns are left out from the highest when the terminal
    /// is narrow.
    const fn priority(self) -> u8 {
        match self {
            Column::Pid | Column::Comm | Column::Path | Column::Payload => 0,
            Column::TlsIn | Column::TcpOut | Column::ZeroCopy => 1,
            Column::Records | Column::Sendfile => 2,
            Column::MeanRecord | Column::SendfileP99 | Column::TlsP99 => 3,
            Column::SendfileP50 | Column::TlsP50 => 4,
        }
    }

    const fn left_aligned(self) -> bool {
        matches!(self, Column::Comm | Column::Path)
    }

    fn index(self) -> usize {
        Column::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    pub fn next(self) -> Column {
        Column::ALL[(self.index() + 1) % Column::ALL.len()]
    }

    pub fn prev(self) -> Column {
        Column::ALL[(self.index() + Column::ALL.len() - 1) % Column::ALL.len()]
    }

    /// The cell text of a row.
    pub fn cell(self, r: &ProcRow) -> String {
        match self {
            Column::Pid => r.pid.to_string(),
            Column::Comm => r.comm.clone(),
            Column::Path => r.path.map_or("-", |p| p.label()).to_string(),
            Column::Payload => fmt_bytes(r.payload_bps),
            Column::TlsIn => fmt_bytes(r.ktls_plaintext_bps),
            Column::TcpOut => fmt_bytes(r.ciphertext_bps),
            Column::Records => fmt_count(r.records_ps),
            Column::MeanRecord => r.mean_record.map_or("-".into(), fmt_bytes),
            Column::Sendfile => fmt_count(r.sendfile_ps),
            Column::SendfileP50 => fmt_latency(r.sendfile_p50_ns),
            Column::SendfileP99 => fmt_latency(r.sendfile_p99_ns),
            Column::TlsP50 => fmt_latency(r.tls_p50_ns),
            Column::TlsP99 => fmt_latency(r.tls_p99_ns),
            Column::ZeroCopy => r
                .zero_copy
                .map_or("-".into(), |z| format!("{:.0}", z * 100.0)),
        }
    }

    /// Orders two rows by this column, ascending.
    fn compare(self, a: &ProcRow, b: &ProcRow) -> std::cmp::Ordering {
        let f = |x: f64, y: f64| x.total_cmp(&y);
        let o = |x: Option<f64>, y: Option<f64>| x.unwrap_or(-1.0).total_cmp(&y.unwrap_or(-1.0));
        let l = |x: Option<u64>, y: Option<u64>| x.cmp(&y);
        match self {
            Column::Pid => a.pid.cmp(&b.pid),
            Column::Comm => a.comm.cmp(&b.comm),
            Column::Path => a.path.map(|p| p.label()).cmp(&b.path.map(|p| p.label())),
            Column::Payload => f(a.payload_bps, b.payload_bps),
            Column::TlsIn => f(a.ktls_plaintext_bps, b.ktls_plaintext_bps),
            Column::TcpOut => f(a.ciphertext_bps, b.ciphertext_bps),
            Column::Records => f(a.records_ps, b.records_ps),
            Column::MeanRecord => o(a.mean_record, b.mean_record),
            Column::Sendfile => f(a.sendfile_ps, b.sendfile_ps),
            Column::SendfileP50 => l(a.sendfile_p50_ns, b.sendfile_p50_ns),
            Column::SendfileP99 => l(a.sendfile_p99_ns, b.sendfile_p99_ns),
            Column::TlsP50 => l(a.tls_p50_ns, b.tls_p50_ns),
            Column::TlsP99 => l(a.tls_p99_ns, b.tls_p99_ns),
            Column::ZeroCopy => o(a.zero_copy, b.zero_copy),
        }
    }
}

/// Bytes (or bytes/s) with decimal units: 0, 512, 1.50K, 12.3M, 118G.
pub fn fmt_bytes(v: f64) -> String {
    if v < 1000.0 {
        return format!("{v:.0}");
    }
    let mut v = v;
    let mut unit = "";
    for u in ["K", "M", "G", "T"] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.2}{unit}")
    } else if v < 100.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

/// Calls or records per second.
pub fn fmt_count(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        fmt_bytes(v)
    }
}

pub fn fmt_latency(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) if ns >= 1_000_000_000 => format!("{:.2}s", ns as f64 / 1e9),
        Some(ns) if ns >= 1_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        Some(ns) if ns >= 10_000 => format!("{:.0}us", ns as f64 / 1e3),
        Some(ns) => format!("{:.1}us", ns as f64 / 1e3),
    }
}

/// The columns that fit into `width`, in screen order (most important first when
/// something has to go).
pub fn columns_for_width(width: u16) -> Vec<Column> {
    let mut by_prio: Vec<Column> = Column::ALL.to_vec();
    by_prio.sort_by_key(|c| c.priority());
    let mut chosen: Vec<Column> = Vec::new();
    let mut used: u16 = 0;
    for c in by_prio {
        let need = c.width() + u16::from(!chosen.is_empty());
        if used + need <= width || c.priority() == 0 {
            chosen.push(c);
            used += need;
        }
    }
    Column::ALL
        .iter()
        .copied()
        .filter(|c| chosen.contains(c))
        .collect()
}

/// What is being typed at the bottom line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Filter(String),
    Interval(String),
}

/// Everything about the screen that is not data.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewState {
    pub sort: Column,
    pub descending: bool,
    /// Substring of the command or PID.
    pub filter: String,
    pub input: Option<Input>,
    /// Selected process (by PID, so the selection survives re-sorting).
    pub selected: Option<u32>,
    /// The process whose connections are shown.
    pub drill: Option<u32>,
    pub help: bool,
    pub paused: bool,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            sort: Column::Payload,
            descending: true,
            filter: String::new(),
            input: None,
            selected: None,
            drill: None,
            help: false,
            paused: false,
        }
    }
}

/// Facts for the header that do not come from the events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub kernel: String,
    /// `Plan::mode_sentence`.
    pub mode: String,
    pub reduced: bool,
    pub interval_s: f64,
    /// /proc/net/tls_stat, when the kernel has it.
    pub tls_stat: Option<BTreeMap<String, u64>>,
    /// One line of news: the built-in load, probes attached later, ...
    pub status: Option<String>,
}

/// The drill-down's facts beyond the snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrillFacts {
    /// Per socket id.
    pub conns: HashMap<u64, ConnFacts>,
    /// The process's sockets as sock_diag reports them.
    pub sessions: Vec<DiagSocket>,
    /// Why sock_diag gave nothing.
    pub diag_error: Option<String>,
    /// Every connection's socket id was resolved to addresses (else the view also lists
    /// sock_diag's sockets of the process).
    pub lookup_available: bool,
}

/// The rows on screen: filtered and sorted.
pub fn visible_rows<'a>(snap: &'a Snapshot, st: &ViewState) -> Vec<&'a ProcRow> {
    let needle = st.filter.to_lowercase();
    let mut rows: Vec<&ProcRow> = snap
        .procs
        .iter()
        .filter(|r| {
            needle.is_empty()
                || r.comm.to_lowercase().contains(&needle)
                || r.pid.to_string().contains(&needle)
        })
        .collect();
    rows.sort_by(|a, b| {
        let o = st.sort.compare(a, b);
        let o = if st.descending { o.reverse() } else { o };
        // Stable tie-break: busiest first, then PID.
        o.then(b.payload_bps.total_cmp(&a.payload_bps))
            .then(a.pid.cmp(&b.pid))
    });
    rows
}

/// tls_stat counters the header shows, in this order.
pub const TLS_STAT_KEYS: [&str; 5] = [
    "TlsCurrTxSw",
    "TlsCurrRxSw",
    "TlsCurrTxDevice",
    "TlsCurrRxDevice",
    "TlsDecryptError",
];

/// Header lines as plain text pieces (shared with `--once`).
pub fn header_lines(snap: &Snapshot, h: &Header) -> Vec<String> {
    let mut v = vec![format!(
        "ktls-trace top - kernel {} - interval {:.2}s - events {} ({}/s) - dropped {}{}",
        h.kernel,
        h.interval_s,
        snap.events,
        fmt_count(snap.events_ps),
        snap.drops_total,
        if snap.drops_window > 0 {
            format!(" (+{} this interval)", snap.drops_window)
        } else {
            String::new()
        }
    )];
    v.push(format!("mode: {}", h.mode));
    v.push(tls_stat_line(h));
    v
}

pub fn tls_stat_line(h: &Header) -> String {
    match &h.tls_stat {
        Some(m) => {
            let parts: Vec<String> = TLS_STAT_KEYS
                .iter()
                .filter_map(|k| m.get(*k).map(|v| format!("{k} {v}")))
                .collect();
            format!("tls_stat: {}", parts.join("  "))
        }
        None => "tls_stat: not available (no kernel TLS on this kernel)".into(),
    }
}

/// Draws one frame.
pub fn draw(frame: &mut Frame, snap: &Snapshot, h: &Header, st: &ViewState, drill: &DrillFacts) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small ({}x{}): ktls-trace top needs at least {MIN_WIDTH}x{MIN_HEIGHT} (q quits)",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    // The mode sentence is long: it wraps onto up to three lines.
    let mode_rows = wrapped_rows(&format!("mode: {}", h.mode), area.width).clamp(1, 3);
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(3 + mode_rows),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, head, snap, h, st);
    match st.drill {
        Some(pid) => draw_drill(frame, body, snap, pid, drill),
        None => draw_table(frame, body, snap, st),
    }
    draw_footer(frame, foot, st);
    if st.help {
        draw_help(frame, area);
    }
}

/// Rows `text` takes when wrapped at word boundaries into `width` columns.
pub fn wrapped_rows(text: &str, width: u16) -> u16 {
    let width = usize::from(width.max(1));
    let mut rows = 1u16;
    let mut used = 0usize;
    for word in text.split(' ') {
        let len = word.chars().count();
        if used > 0 && used + 1 + len <= width {
            used += 1 + len;
            continue;
        }
        if used == 0 && len <= width {
            used = len;
            continue;
        }
        if used > 0 {
            rows += 1;
        }
        // A word longer than the line is broken over several rows.
        let extra = len.saturating_sub(1) / width;
        rows += extra as u16;
        used = len - extra * width;
    }
    rows
}

fn draw_header(frame: &mut Frame, area: Rect, snap: &Snapshot, h: &Header, st: &ViewState) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let drops_style = if snap.drops_total > 0 {
        Style::default()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    let mut first = vec![
        Span::styled("ktls-trace top", bold),
        Span::raw(format!(
            "  kernel {}  interval {:.2}s  events {} ({}/s)  ",
            h.kernel,
            h.interval_s,
            snap.events,
            fmt_count(snap.events_ps)
        )),
        Span::styled(
            format!(
                "dropped {}{}",
                snap.drops_total,
                if snap.drops_window > 0 {
                    format!(" (+{})", snap.drops_window)
                } else {
                    String::new()
                }
            ),
            drops_style,
        ),
    ];
    if snap.undecodable_total > 0 {
        first.push(Span::styled(
            format!("  undecodable {}", snap.undecodable_total),
            Style::default().fg(Color::Red),
        ));
    }
    if st.paused {
        first.push(Span::styled(
            "  PAUSED",
            Style::default().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    let mode_style = if h.reduced {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default().fg(Color::Green)
    };
    let [top, mode, rest] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(2),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(Line::from(first)), top);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw("mode: "),
            Span::styled(h.mode.clone(), mode_style),
        ]))
        .wrap(Wrap { trim: true }),
        mode,
    );
    let lines = vec![
        Line::from(tls_stat_line(h)),
        Line::from(Span::styled(
            h.status.clone().unwrap_or_default(),
            Style::default().fg(Color::Cyan),
        )),
    ];
    frame.render_widget(Paragraph::new(lines), rest);
}

fn draw_table(frame: &mut Frame, area: Rect, snap: &Snapshot, st: &ViewState) {
    let cols = columns_for_width(area.width.saturating_sub(2));
    let rows = visible_rows(snap, st);
    let arrow = if st.descending { "▼" } else { "▲" };
    let header = Row::new(cols.iter().map(|c| {
        let t = if *c == st.sort {
            format!("{}{arrow}", c.title())
        } else {
            c.title().to_string()
        };
        let style = if *c == st.sort {
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        };
        aligned(t, *c, style)
    }));
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let style = if r.active {
                Style::default()
            } else {
                Style::default().fg(Color::DarkGray)
            };
            Row::new(
                cols.iter()
                    .map(|c| aligned(c.cell(r), *c, Style::default())),
            )
            .style(style)
        })
        .collect();
    let mut title = format!(
        " processes: {} - sorted by {} {} ",
        rows.len(),
        st.sort.title(),
        if st.descending { "desc" } else { "asc" }
    );
    if !st.filter.is_empty() {
        title.push_str(&format!("- filter \"{}\" ", st.filter));
    }
    let empty = rows.is_empty();
    let table = Table::new(body, cols.iter().map(|c| Constraint::Length(c.width())))
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut ts = TableState::default();
    ts.select(
        st.selected
            .and_then(|pid| rows.iter().position(|r| r.pid == pid)),
    );
    frame.render_stateful_widget(table, area, &mut ts);
    if empty && area.height > 4 && area.width > 4 {
        let msg = if st.filter.is_empty() {
            "no TCP/TLS send activity seen yet"
        } else {
            "no process matches the filter (Esc in f clears it)"
        };
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width - 4,
            height: 1,
        };
        frame.render_widget(
            Paragraph::new(msg).style(Style::default().fg(Color::DarkGray)),
            inner,
        );
    }
}

fn aligned(text: String, c: Column, style: Style) -> Cell<'static> {
    let line = if c.left_aligned() {
        Line::from(text).alignment(Alignment::Left)
    } else {
        Line::from(text).alignment(Alignment::Right)
    };
    Cell::from(line).style(style)
}

fn draw_drill(frame: &mut Frame, area: Rect, snap: &Snapshot, pid: u32, drill: &DrillFacts) {
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
        fmt_bytes(r.payload_bps),
        fmt_bytes(r.ktls_plaintext_bps),
        fmt_bytes(r.ciphertext_bps),
        fmt_count(r.records_ps),
        r.zero_copy
            .map_or("-".into(), |z| format!("{:.0}%", z * 100.0)),
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(conn_area);
    frame.render_widget(block, conn_area);
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
                fmt_bytes(c.payload_bps),
                fmt_bytes(c.ciphertext_bps),
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
            fmt_bytes,
        ),
        (
            "TLS out B/s",
            r.history.iter().map(|s| s.ciphertext_bps as u64).collect(),
            fmt_bytes,
        ),
        (
            "records/s",
            r.history
                .iter()
                .map(|s| s.records_ps.round() as u64)
                .collect(),
            fmt_count,
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

fn draw_footer(frame: &mut Frame, area: Rect, st: &ViewState) {
    let line = match &st.input {
        Some(Input::Filter(t)) => Line::from(vec![
            Span::styled(
                "filter (command or PID): ",
                Style::default().fg(Color::Yellow),
            ),
            Span::raw(format!("{t}_")),
            Span::raw("   Enter applies, Esc clears"),
        ]),
        Some(Input::Interval(t)) => Line::from(vec![
            Span::styled("interval in seconds: ", Style::default().fg(Color::Yellow)),
            Span::raw(format!("{t}_")),
            Span::raw("   Enter applies, Esc cancels"),
        ]),
        None if st.drill.is_some() => Line::from("Esc back  q quit  p pause  +/- interval  ? help"),
        None => Line::from(
            "q quit  ?/help  s/←→ sort  r reverse  f filter  p pause  d +/- interval  ↑↓ select  Enter connections",
        ),
    };
    frame.render_widget(
        Paragraph::new(line).style(Style::default().fg(Color::DarkGray)),
        area,
    );
}

/// Every key, for the help overlay and docs/top.md.
pub const KEYS: [(&str, &str); 14] = [
    (
        "q, Ctrl-C",
        "quit (probes are detached, the terminal restored)",
    ),
    ("?", "show / hide this help"),
    ("s, →", "sort by the next column"),
    ("←", "sort by the previous column"),
    ("r", "reverse the sort direction"),
    (
        "f",
        "filter: type part of a command or PID, Enter applies, Esc clears",
    ),
    ("p", "pause / resume the display (tracing continues)"),
    ("d", "type a new refresh interval in seconds"),
    ("+ / -", "slower / faster refresh (0.25 s to 10 s)"),
    ("↑ / ↓", "select a process"),
    ("PgUp / PgDn", "move the selection by a page"),
    ("Home / End", "select the first / last process"),
    (
        "Enter",
        "show the selected process's connections and charts",
    ),
    ("Esc", "back to the process list (or close help / input)"),
];

fn draw_help(frame: &mut Frame, area: Rect) {
    let w = area.width.saturating_sub(4).min(84);
    let h = (KEYS.len() as u16 + 4).min(area.height.saturating_sub(2));
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height.saturating_sub(h)) / 2,
        width: w,
        height: h,
    };
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>12}  "),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from("  column meanings and path rules: docs/top.md"));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" help: keys (? or Esc closes) "),
        ),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sockdiag::{TlsConf, TlsInfo},
        top::{
            classify::Path,
            conns::Endpoints,
            model::{ConnRow, Sample},
        },
    };
    use ratatui::{Terminal, backend::TestBackend};

    fn proc_row(pid: u32, comm: &str, path: Path, payload: f64) -> ProcRow {
        ProcRow {
            pid,
            comm: comm.into(),
            path: Some(path),
            active: true,
            payload_bps: payload,
            ktls_plaintext_bps: if path.is_ktls() { payload } else { 0.0 },
            ciphertext_bps: if path.is_ktls() { payload * 1.001 } else { 0.0 },
            records_ps: if path.is_ktls() {
                payload / 16_384.0
            } else {
                0.0
            },
            mean_record: path.is_ktls().then_some(16_384.0),
            sendfile_ps: 10.0,
            sendfile_p50_ns: Some(40_000),
            sendfile_p99_ns: Some(900_000),
            tls_p50_ns: path.is_ktls().then_some(20_000),
            tls_p99_ns: path.is_ktls().then_some(80_000),
            zero_copy: Some(if path == Path::KtlsSendfile { 1.0 } else { 0.0 }),
            conns: vec![ConnRow {
                sock: 0xabcdef0123456789,
                path: Some(path),
                payload_bps: payload,
                ciphertext_bps: 0.0,
                active: true,
            }],
            history: (0..60)
                .map(|i| Sample {
                    at_ns: i * 1_000_000_000,
                    payload_bps: payload * (i as f64) / 60.0,
                    ciphertext_bps: 0.0,
                    records_ps: 1.0,
                })
                .collect(),
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            at_ns: 1,
            window_ns: 1_000_000_000,
            events: 1234,
            events_ps: 1234.0,
            drops_total: 0,
            drops_window: 0,
            undecodable_total: 0,
            procs: vec![
                proc_row(100, "nginx", Path::KtlsSendfile, 120e6),
                proc_row(200, "haproxy", Path::UserspaceTls, 50e6),
                proc_row(300, "rsync", Path::PlainSendfile, 80e6),
                proc_row(400, "curl", Path::Plain, 1e3),
            ],
        }
    }

    fn header() -> Header {
        Header {
            kernel: "6.12.57+deb12-cloud-amd64".into(),
            mode: "full mode: kprobes on sendfile, kernel TLS and TCP transmit, with kernel TLS visible".into(),
            reduced: false,
            interval_s: 1.0,
            tls_stat: Some(
                [("TlsCurrTxSw", 2u64), ("TlsCurrRxSw", 1), ("TlsDecryptError", 0), ("TlsTxSw", 9)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            status: None,
        }
    }

    fn render(
        w: u16,
        h: u16,
        snap: &Snapshot,
        hd: &Header,
        st: &ViewState,
        drill: &DrillFacts,
    ) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| draw(f, snap, hd, st, drill)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf.cell((x, y)).map_or(" ", |c| c.symbol()))
                    .collect::<String>()
            })
            .collect()
    }

    fn text(lines: &[String]) -> String {
        lines.join("\n")
    }

    fn line_of(lines: &[String], needle: &str) -> usize {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{}", text(lines)))
    }

    #[test]
    fn rows_and_default_sort() {
        let s = snapshot();
        let lines = render(
            180,
            30,
            &s,
            &header(),
            &ViewState::default(),
            &DrillFacts::default(),
        );
        let all = text(&lines);
        for c in Column::ALL {
            assert!(
                all.contains(c.title()),
                "column {} missing:\n{all}",
                c.title()
            );
        }
        assert!(all.contains("PAYLOAD/s▼"), "{all}");
        // Default: payload bytes/s, descending.
        let order: Vec<usize> = ["nginx", "rsync", "haproxy", "curl"]
            .iter()
            .map(|n| line_of(&lines, n))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{all}");
        let nginx = &lines[order[0]];
        assert!(
            nginx.contains("kTLS sendfile (zero-copy)") && nginx.contains("120M"),
            "{nginx}"
        );
        assert!(nginx.contains("100"), "zero-copy share: {nginx}");
        assert!(
            nginx.contains("20.0us") || nginx.contains("20us"),
            "{nginx}"
        );
        assert!(lines[line_of(&lines, "haproxy")].contains("user-space TLS"));
        assert!(lines[line_of(&lines, "rsync")].contains("plain sendfile"));
        // Header.
        assert!(all.contains("kernel 6.12.57+deb12-cloud-amd64"));
        assert!(all.contains("interval 1.00s"));
        assert!(all.contains("1.23K/s"), "events/s: {all}");
        assert!(all.contains("dropped 0"));
        assert!(all.contains("TlsCurrTxSw 2") && all.contains("TlsDecryptError 0"));
        assert!(
            !all.contains("TlsTxSw 9"),
            "only the current-session counters"
        );
        assert!(all.contains("full mode"));
    }

    #[test]
    fn sort_orders() {
        let s = snapshot();
        let d = DrillFacts::default();
        let order =
            |st: &ViewState| -> Vec<u32> { visible_rows(&s, st).iter().map(|r| r.pid).collect() };
        let mut st = ViewState::default();
        assert_eq!(order(&st), [100, 300, 200, 400]);
        st.descending = false;
        assert_eq!(order(&st), [400, 200, 300, 100]);
        st.sort = Column::Comm;
        assert_eq!(order(&st), [400, 200, 100, 300]);
        st.sort = Column::Pid;
        st.descending = true;
        assert_eq!(order(&st), [400, 300, 200, 100]);
        st.sort = Column::TlsIn;
        // Ties (0 bytes into kTLS) fall back to payload, busiest first.
        assert_eq!(order(&st), [100, 300, 200, 400]);
        // On screen: the arrow moves and the order follows.
        st.sort = Column::Comm;
        st.descending = false;
        let lines = render(180, 30, &s, &header(), &st, &d);
        assert!(text(&lines).contains("COMMAND▲"));
        assert!(line_of(&lines, "curl") < line_of(&lines, "haproxy"));
        assert!(line_of(&lines, "haproxy") < line_of(&lines, "nginx"));
        assert_eq!(Column::Payload.next(), Column::TlsIn);
        assert_eq!(Column::Pid.prev(), Column::ZeroCopy);
    }

    #[test]
    fn filter_by_comm_or_pid() {
        let s = snapshot();
        let st = ViewState {
            filter: "NGI".into(),
            ..ViewState::default()
        };
        let lines = render(180, 30, &s, &header(), &st, &DrillFacts::default());
        let all = text(&lines);
        assert!(all.contains("nginx") && !all.contains("haproxy") && !all.contains("rsync"));
        assert!(all.contains("filter \"NGI\""));
        let st = ViewState {
            filter: "30".into(),
            ..ViewState::default()
        };
        let pids: Vec<u32> = visible_rows(&s, &st).iter().map(|r| r.pid).collect();
        assert_eq!(pids, [300]);
        let st = ViewState {
            filter: "nothing-like-this".into(),
            ..ViewState::default()
        };
        let all = text(&render(180, 30, &s, &header(), &st, &DrillFacts::default()));
        assert!(all.contains("no process matches"), "{all}");
        // The filter being typed shows at the bottom.
        let st = ViewState {
            input: Some(Input::Filter("ngi".into())),
            ..ViewState::default()
        };
        let lines = render(180, 30, &s, &header(), &st, &DrillFacts::default());
        assert!(
            lines[29].contains("filter (command or PID): ngi_"),
            "{}",
            lines[29]
        );
    }

    #[test]
    fn help_overlay_lists_every_key() {
        let st = ViewState {
            help: true,
            ..ViewState::default()
        };
        let all = text(&render(
            120,
            30,
            &snapshot(),
            &header(),
            &st,
            &DrillFacts::default(),
        ));
        assert!(all.contains("help: keys"));
        for (k, what) in KEYS {
            assert!(all.contains(k), "key {k} missing:\n{all}");
            assert!(all.contains(&what[..20.min(what.len())]), "{what} missing");
        }
    }

    #[test]
    fn drops_are_shown_and_highlighted() {
        let mut s = snapshot();
        s.drops_total = 17;
        s.drops_window = 5;
        let mut t = Terminal::new(TestBackend::new(160, 24)).expect("terminal");
        t.draw(|f| {
            draw(
                f,
                &s,
                &header(),
                &ViewState::default(),
                &DrillFacts::default(),
            )
        })
        .expect("draw");
        let buf = t.backend().buffer().clone();
        let row0: String = (0..160)
            .map(|x| buf.cell((x, 0)).map_or(" ", |c| c.symbol()))
            .collect();
        let at = row0
            .find("dropped 17 (+5)")
            .unwrap_or_else(|| panic!("{row0}"));
        let cell = buf.cell((at as u16, 0)).expect("cell");
        assert_eq!(cell.bg, Color::Red, "drops are highlighted");
        // No highlight when nothing was lost.
        let s = snapshot();
        t.draw(|f| {
            draw(
                f,
                &s,
                &header(),
                &ViewState::default(),
                &DrillFacts::default(),
            )
        })
        .expect("draw");
        let buf = t.backend().buffer().clone();
        let row0: String = (0..160)
            .map(|x| buf.cell((x, 0)).map_or(" ", |c| c.symbol()))
            .collect();
        let at = row0.find("dropped 0").unwrap_or_else(|| panic!("{row0}"));
        assert_ne!(buf.cell((at as u16, 0)).expect("cell").bg, Color::Red);
    }

    #[test]
    fn drill_down_shows_connections_tls_and_charts() {
        let s = snapshot();
        let st = ViewState {
            drill: Some(100),
            selected: Some(100),
            ..ViewState::default()
        };
        let mut d = DrillFacts {
            lookup_available: true,
            ..DrillFacts::default()
        };
        d.conns.insert(
            0xabcdef0123456789,
            ConnFacts {
                endpoints: Some(Endpoints {
                    local: "127.0.0.1:8443".parse().ok(),
                    peer: "127.0.0.1:51234".parse().ok(),
                }),
                tls: Some(TlsInfo {
                    version: Some(0x0304),
                    cipher: Some(51),
                    tx: Some(TlsConf::Sw),
                    rx: Some(TlsConf::Sw),
                    ..TlsInfo::default()
                }),
            },
        );
        let all = text(&render(140, 40, &s, &header(), &st, &d));
        assert!(
            all.contains("PID 100 nginx - kTLS sendfile (zero-copy)"),
            "{all}"
        );
        assert!(all.contains("abcdef0123456789"));
        assert!(all.contains("127.0.0.1:51234"));
        assert!(all.contains("TLS 1.3 AES-GCM-128 tx SW"));
        assert!(all.contains("payload B/s over the last minute"));
        assert!(all.contains("records/s over the last minute"));
        assert!(!all.contains("haproxy"), "the process list is gone");
        // Sparkline bars are drawn.
        assert!(all.contains('█'), "{all}");
        // Without address lookup: sock_diag's sockets of the process instead.
        let d = DrillFacts {
            sessions: vec![DiagSocket {
                state: 1,
                local: "127.0.0.1:8443".parse().unwrap(),
                peer: "127.0.0.1:40000".parse().unwrap(),
                uid: 0,
                inode: 5,
                cookie: 0,
                ulp: Some("tls".into()),
                tls: Some(TlsInfo {
                    version: Some(0x0303),
                    cipher: Some(52),
                    tx: Some(TlsConf::Hw),
                    rx: Some(TlsConf::Base),
                    ..TlsInfo::default()
                }),
            }],
            ..DrillFacts::default()
        };
        let all = text(&render(140, 40, &s, &header(), &st, &d));
        assert!(all.contains("sock_diag"));
        assert!(all.contains("127.0.0.1:40000"));
        assert!(all.contains("TLS 1.2 AES-GCM-256 tx HW"), "{all}");
        // A process that went away.
        let st = ViewState {
            drill: Some(999),
            ..ViewState::default()
        };
        let all = text(&render(140, 40, &s, &header(), &st, &DrillFacts::default()));
        assert!(all.contains("process 999 has exited or had no traced activity"));
    }

    #[test]
    fn small_and_narrow_terminals() {
        let s = snapshot();
        let all = text(&render(
            40,
            8,
            &s,
            &header(),
            &ViewState::default(),
            &DrillFacts::default(),
        ));
        assert!(all.contains("terminal too small"), "{all}");
        // 80 columns: the important columns stay.
        let lines = render(
            80,
            24,
            &s,
            &header(),
            &ViewState::default(),
            &DrillFacts::default(),
        );
        let all = text(&lines);
        for t in ["PID", "COMMAND", "PATH", "PAYLOAD/s"] {
            assert!(all.contains(t), "{t}:\n{all}");
        }
        assert!(!all.contains("TLS-p50"));
        let cols = columns_for_width(78);
        let used: u16 = cols.iter().map(|c| c.width() + 1).sum();
        assert!(used <= 79, "{cols:?}");
        // Every other size in between draws without panicking.
        for (w, h) in [(60, 12), (61, 13), (100, 15), (300, 80)] {
            let st = ViewState {
                help: true,
                drill: Some(100),
                ..ViewState::default()
            };
            render(w, h, &s, &header(), &st, &DrillFacts::default());
            render(
                w,
                h,
                &s,
                &header(),
                &ViewState::default(),
                &DrillFacts::default(),
            );
        }
    }

    #[test]
    fn reduced_mode_and_pause_are_visible() {
        let h = Header {
            mode: "reduced mode: tracepoints only (sendfile and socket send bytes; no kernel TLS or TCP push visibility) because kernel built without CONFIG_KPROBES".into(),
            reduced: true,
            tls_stat: None,
            status: Some("load: plain-sendfile running (pid 77)".into()),
            ..header()
        };
        let st = ViewState {
            paused: true,
            ..ViewState::default()
        };
        let all = text(&render(
            200,
            30,
            &Snapshot::default(),
            &h,
            &st,
            &DrillFacts::default(),
        ));
        assert!(all.contains("reduced mode: tracepoints only"));
        assert!(all.contains("tls_stat: not available"));
        assert!(all.contains("PAUSED"));
        assert!(all.contains("load: plain-sendfile running"));
        assert!(all.contains("no TCP/TLS send activity seen yet"));
    }

    #[test]
    fn long_mode_sentences_wrap() {
        assert_eq!(wrapped_rows("a bb ccc", 8), 1);
        assert_eq!(wrapped_rows("a bb ccc", 4), 2);
        assert_eq!(wrapped_rows("a bb ccc", 3), 3);
        assert_eq!(wrapped_rows("abcdefghij", 4), 3);
        let h = Header {
            mode: "reduced mode: tracepoints only (sendfile and socket send bytes; no kernel TLS or TCP push visibility) because kernel built without CONFIG_KPROBES (no kprobe PMU)".into(),
            reduced: true,
            ..header()
        };
        let lines = render(
            80,
            24,
            &snapshot(),
            &h,
            &ViewState::default(),
            &DrillFacts::default(),
        );
        let all = text(&lines);
        assert!(
            all.contains("CONFIG_KPROBES"),
            "the whole sentence is shown:\n{all}"
        );
        assert!(all.contains("tls_stat:"), "{all}");
        assert!(all.contains("nginx"), "{all}");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(0.0), "0");
        assert_eq!(fmt_bytes(999.0), "999");
        assert_eq!(fmt_bytes(1500.0), "1.50K");
        assert_eq!(fmt_bytes(12_345_678.0), "12.3M");
        assert_eq!(fmt_bytes(118e9), "118G");
        assert_eq!(fmt_count(0.5), "0.5");
        assert_eq!(fmt_count(0.0), "0");
        assert_eq!(fmt_latency(Some(1_500)), "1.5us");
        assert_eq!(fmt_latency(Some(45_000)), "45us");
        assert_eq!(fmt_latency(Some(2_500_000)), "2.50ms");
        assert_eq!(fmt_latency(None), "-");
    }
}
