//! What users see: each view folds the session's events (through the classifier) its own
//! way. `trace` prints them and sums them up ([`summary`]), `top` aggregates per process
//! and interval, `verify` judges one traced load, `doctor` explains the kernel, `export`
//! serves cumulative totals to Prometheus.

pub mod doctor;
pub mod export;
pub mod summary;
pub mod top;
pub mod trace;
#[cfg(feature = "load")]
pub mod verify;
