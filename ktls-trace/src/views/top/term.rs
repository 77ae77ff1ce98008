//! The terminal while `top` runs: raw mode and the alternate screen, and their undoing on
//! every way out — normal quit, an error, a panic (panic hook), and SIGINT/SIGTERM (the
//! event loop stops and the guard drops).

use std::{
    io::{self, Stdout, Write},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use crossterm::{
    cursor,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{Terminal, TerminalOptions, Viewport, backend::CrosstermBackend, layout::Rect};

/// Why the terminal could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error("cannot switch the terminal to raw mode: {0}")]
    RawMode(io::Error),
    #[error("cannot set up the screen: {0}")]
    Screen(io::Error),
}

/// Is the terminal in our state right now (so restoring is needed)?
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Puts the terminal back: cooked mode, main screen, visible cursor. Safe to call more
/// than once and from the panic hook.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let mut out = io::stdout();
        let _ = crossterm::execute!(out, LeaveAlternateScreen, cursor::Show);
        let _ = out.flush();
    }
}

/// Restores the terminal before the panic message is printed (otherwise it would land
/// on the alternate screen, in raw mode, and vanish).
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Owns the terminal while the UI runs; dropping it restores the terminal.
pub struct TermGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TermGuard {
    pub fn enter() -> Result<TermGuard, TermError> {
        install_panic_hook();
        terminal::enable_raw_mode().map_err(TermError::RawMode)?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut out = io::stdout();
        if let Err(e) = crossterm::execute!(out, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(TermError::Screen(e));
        }
        let backend = CrosstermBackend::new(io::stdout());
        let made = match unknown_size_fallback() {
            // A serial console reports 0x0: draw into a fixed area instead.
            Some((w, h)) => Terminal::with_options(
                backend,
                TerminalOptions {
                    viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
                },
            ),
            None => Terminal::new(backend),
        };
        match made {
            Ok(terminal) => Ok(TermGuard { terminal }),
            Err(e) => {
                restore();
                Err(TermError::Screen(e))
            }
        }
    }
}

/// The size to use when the terminal does not know its own (a serial console's window
/// size is 0x0 until `stty rows R cols C`): $COLUMNS x $LINES, else 80x24.
fn unknown_size_fallback() -> Option<(u16, u16)> {
    match terminal::size() {
        Ok((w, h)) if w > 0 && h > 0 => None,
        _ => {
            let env = |k: &str, d: u16| {
                std::env::var(k)
                    .ok()
                    .and_then(|v| v.parse::<u16>().ok())
                    .filter(|v| *v > 0)
                    .unwrap_or(d)
            };
            Some((env("COLUMNS", 80), env("LINES", 24)))
        }
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore();
    }
}
