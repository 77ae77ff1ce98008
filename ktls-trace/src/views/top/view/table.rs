//! The process table.

use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
};

use super::{
    ViewState,
    columns::{self, Column},
    visible_rows,
};
use crate::views::top::model::Snapshot;

pub fn draw(frame: &mut Frame, area: Rect, snap: &Snapshot, st: &ViewState) {
    let cols = columns::for_width(area.width.saturating_sub(2));
    let rows = visible_rows(snap, st);
    let arrow = if st.descending { "▼" } else { "▲" };
    let header = Row::new(cols.iter().map(|c| {
        let t = if *c == st.sort {
            format!("{}{arrow}", c.title())
        } else {
            c.title().to_string()
        };
        let style = if *c == st.sort {
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        };
        aligned(t, *c, style)
    }));
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let style = if r.active {
                Style::default()
            } else {
                Style::default().fg(Color::DarkGray)
            };
            Row::new(
                cols.iter()
                    .map(|c| aligned(c.cell(r), *c, Style::default())),
            )
            .style(style)
        })
        .collect();
    let mut title = format!(
        " processes: {} - sorted by {} {} ",
        rows.len(),
        st.sort.title(),
        if st.descending { "desc" } else { "asc" }
    );
    if !st.filter.is_empty() {
        title.push_str(&format!("- filter \"{}\" ", st.filter));
    }
    let empty = rows.is_empty();
    let table = Table::new(body, cols.iter().map(|c| Constraint::Length(c.width())))
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut ts = TableState::default();
    ts.select(
        st.selected
            .and_then(|pid| rows.iter().position(|r| r.pid == pid)),
    );
    frame.render_stateful_widget(table, area, &mut ts);
    if empty && area.height > 4 && area.width > 4 {
        let msg = if st.filter.is_empty() {
            "no TCP/TLS send activity seen yet"
        } else {
            "no process matches the filter (Esc in f clears it)"
        };
        let inner = Rect {
            x: area.x + 2,
            y: area.y + 2,
            width: area.width - 4,
            height: 1,
        };
        frame.render_widget(
            Paragraph::new(msg).style(Style::default().fg(Color::DarkGray)),
            inner,
        );
    }
}

fn aligned(text: String, c: Column, style: Style) -> Cell<'static> {
    let line = if c.left_aligned() {
        Line::from(text).alignment(Alignment::Left)
    } else {
        Line::from(text).alignment(Alignment::Right)
    };
    Cell::from(line).style(style)
}
