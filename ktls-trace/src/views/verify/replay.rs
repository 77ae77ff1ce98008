//! Event streams recorded on real kernels (`cargo xtask record`: one `verify --record` run
//! of every load mode per kernel of the matrix: 5.10 without kernel TLS, 6.1 with
//! sendpage, 6.12 with MSG_SPLICE_PAGES, 7.3 without tls_push_record), fed to `verify`'s
//! judge and to `top`'s model: both fold the same classifier's output, so they must reach the
//! same path and the same byte counts, on every kernel era.

use super::{fixture, judge::judge};
use crate::{
    classify::{Path, Rules},
    load::Mode,
    views::top::model::Model,
};

/// `(kernel/mode, recording)`.
const RECORDINGS: &[(&str, &str)] = &[
    (
        "6.1/ktls-sendfile",
        include_str!("../../../fixtures/6.1/ktls-sendfile.jsonl"),
    ),
    (
        "6.1/ktls-write",
        include_str!("../../../fixtures/6.1/ktls-write.jsonl"),
    ),
    (
        "6.1/userspace-tls",
        include_str!("../../../fixtures/6.1/userspace-tls.jsonl"),
    ),
    (
        "6.1/plain-sendfile",
        include_str!("../../../fixtures/6.1/plain-sendfile.jsonl"),
    ),
    (
        "6.12/ktls-sendfile",
        include_str!("../../../fixtures/6.12/ktls-sendfile.jsonl"),
    ),
    (
        "6.12/ktls-write",
        include_str!("../../../fixtures/6.12/ktls-write.jsonl"),
    ),
    (
        "6.12/userspace-tls",
        include_str!("../../../fixtures/6.12/userspace-tls.jsonl"),
    ),
    (
        "6.12/plain-sendfile",
        include_str!("../../../fixtures/6.12/plain-sendfile.jsonl"),
    ),
    (
        "7.3/ktls-sendfile",
        include_str!("../../../fixtures/7.3/ktls-sendfile.jsonl"),
    ),
    (
        "7.3/ktls-write",
        include_str!("../../../fixtures/7.3/ktls-write.jsonl"),
    ),
    (
        "7.3/userspace-tls",
        include_str!("../../../fixtures/7.3/userspace-tls.jsonl"),
    ),
    (
        "7.3/plain-sendfile",
        include_str!("../../../fixtures/7.3/plain-sendfile.jsonl"),
    ),
    (
        "5.10/userspace-tls",
        include_str!("../../../fixtures/5.10/userspace-tls.jsonl"),
    ),
    (
        "5.10/plain-sendfile",
        include_str!("../../../fixtures/5.10/plain-sendfile.jsonl"),
    ),
];

const SEC: u64 = 1_000_000_000;

#[test]
fn top_and_verify_agree_on_recorded_streams() {
    let mut eras = std::collections::BTreeSet::new();
    for (name, text) in RECORDINGS {
        let (h, events) = fixture::read(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(events.len() > 10, "{name}: {} events", events.len());
        eras.insert(events.iter().any(|e| e.probe.name() == "tls_sw_sendpage"));

        let verdict = judge(&events, &h.served);
        // top, over one window of one second that holds the whole recording: its rates
        // are the recording's byte counts.
        let mut model = Model::new(Rules::default(), 0);
        model.ingest_all(&events);
        let snap = model.close_window(SEC);
        let row = snap
            .procs
            .iter()
            .find(|r| r.pid == h.pid)
            .unwrap_or_else(|| panic!("{name}: no row for the server {}", h.pid));

        // The same path, and the one the load mode takes.
        assert_eq!(
            verdict.path,
            Some(Path::from(h.mode)),
            "{name}: {verdict:#?}"
        );
        assert_eq!(row.path, verdict.path, "{name}");
        // The same bytes on every path, the same ciphertext and records.
        for p in Path::ALL {
            assert_eq!(
                row.paths_bps.get(p) as u64,
                verdict.numbers.payload.get(p),
                "{name}: {p}"
            );
        }
        assert_eq!(
            row.ciphertext_bps as u64, verdict.numbers.ciphertext_bytes,
            "{name}"
        );
        if h.mode.kernel_tls() {
            assert!(
                verdict.numbers.records.is_some_and(|r| r > 0),
                "{name}: {verdict:#?}"
            );
            assert_eq!(
                row.records_ps.map(|r| r as u64),
                verdict.numbers.records,
                "{name}"
            );
        }
        // And the verdicts the live tests expect of each mode.
        let passed: Vec<bool> = verdict.stages.iter().map(|s| s.pass).collect();
        let expected = match h.mode {
            Mode::KtlsSendfile => [true, true, true, true, true],
            Mode::KtlsWrite => [false, false, true, false, true],
            Mode::UserspaceTls => [false, false, false, false, true],
            Mode::PlainSendfile => [true, false, false, false, true],
        };
        assert_eq!(passed, expected, "{name}: {verdict:#?}");
        assert!(
            verdict.numbers.payload.get(Path::from(h.mode)) >= h.served.body_bytes,
            "{name}: the body is on its path"
        );
    }
    assert_eq!(eras.len(), 2, "both kernel eras are recorded");
}
