//! The help overlay: every key.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph},
};

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

pub fn draw(frame: &mut Frame, area: Rect) {
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
