//! The header, built once as emphasised pieces of text: the interactive view styles them,
//! `--once` joins them.

use std::collections::BTreeMap;

use super::format;
use crate::views::top::model::Snapshot;

/// Facts for the header that do not come from the events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub kernel: String,
    /// `Plan::mode_sentence`, and what this kernel cannot measure.
    pub mode: String,
    pub reduced: bool,
    pub interval_s: f64,
    /// /proc/net/tls_stat, when the kernel has it.
    pub tls_stat: Option<BTreeMap<String, u64>>,
    /// One line of news: the built-in load, probes attached later, ...
    pub status: Option<String>,
}

/// How a piece of the header is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emphasis {
    Plain,
    Title,
    /// Events were lost: the numbers are low.
    Alarm,
    /// Something is off but not lost (undecodable records).
    Warning,
    Paused,
    /// The mode: full (good) or reduced.
    Mode {
        reduced: bool,
    },
    Status,
}

/// One header line: pieces of text with their emphasis.
pub type Line = Vec<(String, Emphasis)>;

/// tls_stat counters the header shows, in this order.
const TLS_STAT_KEYS: [&str; 5] = [
    "TlsCurrTxSw",
    "TlsCurrRxSw",
    "TlsCurrTxDevice",
    "TlsCurrRxDevice",
    "TlsDecryptError",
];

/// The header's lines: counts, mode, tls_stat, status (the last only when there is one).
pub fn lines(snap: &Snapshot, h: &Header, paused: bool) -> Vec<Line> {
    use Emphasis::*;
    let mut first = vec![
        ("ktls-trace top".to_string(), Title),
        (
            format!(
                " - kernel {} - interval {:.2}s - events {} ({}/s) - ",
                h.kernel,
                h.interval_s,
                snap.events,
                format::count(snap.events_ps)
            ),
            Plain,
        ),
        (
            format!(
                "dropped {}{}{}",
                snap.drops_total,
                if snap.drops_window > 0 {
                    format!(" (+{} this interval)", snap.drops_window)
                } else {
                    String::new()
                },
                // Why, so that a drop on the screen says what to do about it.
                if snap.drop_causes.is_empty() {
                    String::new()
                } else {
                    format!(": {}", snap.drop_causes)
                }
            ),
            if snap.drops_total > 0 { Alarm } else { Plain },
        ),
    ];
    if snap.undecodable_total > 0 {
        first.push((
            format!(" - undecodable {}", snap.undecodable_total),
            Warning,
        ));
    }
    if paused {
        first.push((" PAUSED".to_string(), Paused));
    }
    let mut v = vec![
        first,
        vec![
            ("mode: ".to_string(), Plain),
            (h.mode.clone(), Mode { reduced: h.reduced }),
        ],
        vec![(tls_stat(h), Plain)],
    ];
    if let Some(s) = &h.status {
        v.push(vec![(s.clone(), Status)]);
    }
    v
}

fn tls_stat(h: &Header) -> String {
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

/// A line as plain text.
pub fn text(line: &Line) -> String {
    line.iter().map(|(t, _)| t.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pieces() {
        let snap = Snapshot {
            events: 10,
            events_ps: 10.0,
            drops_total: 3,
            drops_window: 1,
            drop_causes: "ring buffer full 2, skipped by the kernel 1".into(),
            undecodable_total: 2,
            ..Snapshot::default()
        };
        let h = Header {
            kernel: "6.1.0-1-cloud-amd64".into(),
            mode: "full mode".into(),
            interval_s: 2.0,
            status: Some("load: ktls-sendfile running (pid 9)".into()),
            tls_stat: Some(
                [("TlsCurrTxSw", 2u64), ("TlsTxSw", 9)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            ..Header::default()
        };
        let l = lines(&snap, &h, true);
        assert_eq!(l.len(), 4);
        let first = text(&l[0]);
        assert!(
            first.contains("kernel 6.1.0-1-cloud-amd64 - interval 2.00s"),
            "{first}"
        );
        assert!(
            first.contains(
                "dropped 3 (+1 this interval): ring buffer full 2, skipped by the kernel 1 - "
            ),
            "{first}"
        );
        assert!(
            first.contains("undecodable 2") && first.ends_with("PAUSED"),
            "{first}"
        );
        assert!(
            l[0].iter()
                .any(|(t, e)| t.starts_with("dropped") && *e == Emphasis::Alarm)
        );
        assert_eq!(text(&l[1]), "mode: full mode");
        assert_eq!(
            text(&l[2]),
            "tls_stat: TlsCurrTxSw 2",
            "only the current-session counters"
        );
        assert_eq!(text(&l[3]), "load: ktls-sendfile running (pid 9)");
        let quiet = lines(&Snapshot::default(), &Header::default(), false);
        assert_eq!(quiet.len(), 3);
        assert!(text(&quiet[2]).contains("not available"));
    }
}
