//! SIGINT and SIGTERM as one future: every long-running command (trace, top, load, verify)
//! stops on either, so that it can detach its probes, restore the terminal and print its
//! summary instead of dying with the default action.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Installs the SIGINT and SIGTERM handlers now and returns a future that resolves when
/// either arrives. Pin it and poll it by `&mut` in a `select!` loop.
pub fn stop_signals() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
