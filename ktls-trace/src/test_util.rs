//! Helpers for the unit tests.

use std::io::Write as _;

/// Says that a test cannot run on this kernel, in the line the QEMU harness counts as a
/// skip (`KT-SKIP <test>: <why>`). Written straight to stderr, past libtest's capture, so
/// the skip is visible in every run, not only when the test fails.
pub fn skip(test: &str, why: &str) {
    let mut err = std::io::stderr().lock();
    // On a line of its own: libtest has already printed "test <name> ... " without a
    // newline, and prints the verdict after the test returns.
    let _ = writeln!(err, "\nKT-SKIP {test}: {why}");
}
