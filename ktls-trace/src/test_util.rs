//! Helpers for the unit tests.

use std::io::Write as _;

/// Says that a test cannot run on this kernel, in the line the QEMU harness counts as a
/// skip (`KT-SKIP <test>: <why>`). Written straight to stderr, past libtest's capture, so
/// the skip is visible in every run, not only when the test fails.
pub fn skip(test: &str, why: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "KT-SKIP {test}: {why}");
}
