//! The process table's columns: title, width, what a cell shows, how rows sort, and which
//! columns fit a terminal. Shared by the interactive table and `--once`'s text.

use super::format;
use crate::views::top::model::ProcRow;

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

    /// Names sort A to Z and are left-aligned; numbers sort biggest first.
    pub const fn is_text(self) -> bool {
        matches!(self, Column::Pid | Column::Comm | Column::Path)
    }

    pub const fn left_aligned(self) -> bool {
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
            Column::Payload => format::bytes(r.payload_bps),
            Column::TlsIn => format::bytes(r.ktls_plaintext_bps),
            Column::TcpOut => format::bytes(r.ciphertext_bps),
            Column::Records => r.records_ps.map_or("-".into(), format::count),
            Column::MeanRecord => r.mean_record.map_or("-".into(), format::bytes),
            Column::Sendfile => format::count(r.sendfile_ps),
            Column::SendfileP50 => format::latency(r.sendfile_p50_ns),
            Column::SendfileP99 => format::latency(r.sendfile_p99_ns),
            Column::TlsP50 => format::latency(r.tls_p50_ns),
            Column::TlsP99 => format::latency(r.tls_p99_ns),
            Column::ZeroCopy => format::percent(r.zero_copy),
        }
    }

    /// Orders two rows by this column, ascending.
    pub fn compare(self, a: &ProcRow, b: &ProcRow) -> std::cmp::Ordering {
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
            Column::Records => o(a.records_ps, b.records_ps),
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

/// The columns that fit into `width`, in screen order (most important first when
/// something has to go).
pub fn for_width(width: u16) -> Vec<Column> {
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

/// One row as fixed-width text (every column, `--once`).
pub fn text_row(cells: impl Iterator<Item = (Column, String)>) -> String {
    let cells: Vec<String> = cells
        .map(|(c, t)| {
            let w = usize::from(c.width());
            if c.left_aligned() {
                format!("{t:<w$}")
            } else {
                format!("{t:>w$}")
            }
        })
        .collect();
    cells.join(" ").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_terminals_keep_the_important_columns() {
        let cols = for_width(78);
        for c in [Column::Pid, Column::Comm, Column::Path, Column::Payload] {
            assert!(cols.contains(&c), "{cols:?}");
        }
        assert!(!cols.contains(&Column::TlsP50));
        let used: u16 = cols.iter().map(|c| c.width() + 1).sum();
        assert!(used <= 79, "{cols:?}");
        assert_eq!(for_width(400), Column::ALL);
        assert_eq!(Column::Payload.next(), Column::TlsIn);
        assert_eq!(Column::Pid.prev(), Column::ZeroCopy);
    }

    #[test]
    fn text_rows_align() {
        let r = text_row(
            [
                (Column::Pid, "7".to_string()),
                (Column::Comm, "x".to_string()),
            ]
            .into_iter(),
        );
        assert_eq!(r, "      7 x");
    }
}
