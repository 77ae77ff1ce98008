//! Drawing: everything on screen comes from a [`Snapshot`], the [`Header`] facts and the
//! [`ViewState`] (sort, filter, selection, drill-down, help). No I/O happens here, so the
//! rendering tests draw synthetic snapshots into ratatui's `TestBackend`.
//!
//! - [`columns`]: the process table's column model (shared with `--once`);
//! - [`format`]: numbers as shown;
//! - [`header`]: the header lines (shared with `--once`);
//! - [`table`], [`drill`], [`help`]: the three things the body can show.

pub mod columns;
mod drill;
pub mod format;
pub mod header;
mod help;
mod table;

use std::collections::HashMap;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Wrap},
};

pub use columns::Column;
pub use header::Header;

use super::{
    conns::ConnFacts,
    model::{ProcRow, Snapshot},
};
use crate::sockdiag::DiagSocket;

/// Smallest terminal the view draws into.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 12;

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
        Some(pid) => drill::draw(frame, body, snap, pid, drill),
        None => table::draw(frame, body, snap, st),
    }
    draw_footer(frame, foot, st);
    if st.help {
        help::draw(frame, area);
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

fn style(e: header::Emphasis) -> Style {
    use header::Emphasis::*;
    match e {
        Plain => Style::default(),
        Title => Style::default().add_modifier(Modifier::BOLD),
        Alarm => Style::default()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD),
        Warning => Style::default().fg(Color::Red),
        Paused => Style::default().fg(Color::Black).bg(Color::Yellow),
        Mode { reduced: true } => Style::default().fg(Color::Yellow),
        Mode { reduced: false } => Style::default().fg(Color::Green),
        Status => Style::default().fg(Color::Cyan),
    }
}

fn draw_header(frame: &mut Frame, area: Rect, snap: &Snapshot, h: &Header, st: &ViewState) {
    let mut lines = header::lines(snap, h, st.paused).into_iter().map(|l| {
        Line::from(
            l.into_iter()
                .map(|(t, e)| Span::styled(t, style(e)))
                .collect::<Vec<_>>(),
        )
    });
    let [top, mode, rest] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(2),
    ])
    .areas(area);
    if let Some(l) = lines.next() {
        frame.render_widget(Paragraph::new(l), top);
    }
    if let Some(l) = lines.next() {
        frame.render_widget(Paragraph::new(l).wrap(Wrap { trim: true }), mode);
    }
    frame.render_widget(Paragraph::new(lines.collect::<Vec<_>>()), rest);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        classify::Path,
        sockdiag::{Endpoints, TlsConf, TlsInfo},
        views::top::model::{ConnRow, PathRates, Sample, ThreadRow},
    };
    use ratatui::{Terminal, backend::TestBackend};

    pub(crate) fn proc_row(pid: u32, comm: &str, path: Path, payload: f64) -> ProcRow {
        let mut paths_bps = PathRates::default();
        paths_bps.0[path.index()] = payload;
        ProcRow {
            pid,
            comm: comm.into(),
            path: Some(path),
            active: true,
            payload_bps: payload,
            paths_bps,
            ktls_plaintext_bps: if path.is_ktls() { payload } else { 0.0 },
            ciphertext_bps: if path.is_ktls() { payload * 1.001 } else { 0.0 },
            records_ps: Some(if path.is_ktls() {
                payload / 16_384.0
            } else {
                0.0
            }),
            mean_record: path.is_ktls().then_some(16_384.0),
            sendfile_ps: 10.0,
            sendfile_p50_ns: Some(40_000),
            sendfile_p99_ns: Some(900_000),
            tls_p50_ns: path.is_ktls().then_some(20_000),
            tls_p99_ns: path.is_ktls().then_some(80_000),
            zero_copy: Some(if path == Path::KtlsSendfile { 1.0 } else { 0.0 }),
            totals: Default::default(),
            conns: vec![ConnRow {
                sock: 0xabcdef0123456789,
                path: Some(path),
                payload_bps: payload,
                ciphertext_bps: 0.0,
                active: true,
            }],
            threads: vec![ThreadRow {
                tid: pid + 1,
                comm: format!("{comm}-worker"),
                payload_bps: payload,
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

    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            at_ns: 1,
            window_ns: 1_000_000_000,
            events: 1234,
            events_ps: 1234.0,
            ring_records_total: 1234,
            drops_total: 0,
            drops_window: 0,
            drop_causes: String::new(),
            undecodable_total: 0,
            procs: vec![
                proc_row(100, "nginx", Path::KtlsSendfile, 120e6),
                proc_row(200, "haproxy", Path::UserspaceTls, 50e6),
                proc_row(300, "rsync", Path::PlainSendfile, 80e6),
                proc_row(400, "curl", Path::Plain, 1e3),
            ],
        }
    }

    pub(crate) fn header() -> Header {
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

    pub(crate) fn render(
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
        for (k, what) in help::KEYS {
            assert!(all.contains(k), "key {k} missing:\n{all}");
            assert!(all.contains(&what[..20.min(what.len())]), "{what} missing");
        }
    }

    #[test]
    fn drops_are_shown_and_highlighted() {
        // The background colour under the `dropped` text of the first line.
        let drops_bg = |s: &Snapshot, text: &str| -> Color {
            let mut t = Terminal::new(TestBackend::new(160, 24)).expect("terminal");
            t.draw(|f| {
                draw(
                    f,
                    s,
                    &header(),
                    &ViewState::default(),
                    &DrillFacts::default(),
                )
            })
            .expect("draw");
            let buf = t.backend().buffer();
            let row: String = (0..160)
                .map(|x| buf.cell((x, 0)).map_or(" ", |c| c.symbol()))
                .collect();
            let at = row
                .find(text)
                .unwrap_or_else(|| panic!("{text} not in {row}"));
            buf.cell((at as u16, 0)).map_or(Color::Reset, |c| c.bg)
        };
        let mut s = snapshot();
        s.drops_total = 17;
        s.drops_window = 5;
        assert_eq!(
            drops_bg(&s, "dropped 17 (+5"),
            Color::Red,
            "drops are highlighted"
        );
        // No highlight when nothing was lost.
        assert_ne!(drops_bg(&snapshot(), "dropped 0"), Color::Red);
    }

    #[test]
    fn drill_down_shows_connections_threads_tls_and_charts() {
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
        assert!(all.contains("threads: nginx-worker (101) 120M/s"), "{all}");
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
        let all = text(&render(
            80,
            24,
            &s,
            &header(),
            &ViewState::default(),
            &DrillFacts::default(),
        ));
        for t in ["PID", "COMMAND", "PATH", "PAYLOAD/s"] {
            assert!(all.contains(t), "{t}:\n{all}");
        }
        assert!(!all.contains("TLS-p50"));
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
}
