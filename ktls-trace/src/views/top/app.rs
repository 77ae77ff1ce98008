//! The interactive loop: events from the ring buffer go into the [`Model`]; every
//! interval a window closes into a [`Snapshot`] that is drawn; keys change the
//! [`ViewState`]. Keys are read on a thread of their own (crossterm's blocking reader)
//! and arrive through a channel, so the loop is one `select!` like `trace`'s.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use super::{
    MAX_INTERVAL, MIN_INTERVAL,
    conns::{SockLookup, facts_for, sessions_of},
    load_child::LoadChild,
    model::{Model, Snapshot},
    term::TermGuard,
    view::{self, Column, DrillFacts, Header, Input, ViewState, visible_rows},
};
use crate::{
    clock, procs,
    session::{Session, Update},
    sockdiag,
};

/// Refresh intervals `+` and `-` step through (seconds).
const INTERVAL_STEPS: [f64; 7] = [0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0];

/// What a key asks the loop to do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Nothing,
    /// The view state changed: draw again.
    Redraw,
    /// Entering a process's connections: draw with fresh sock_diag facts.
    Drill,
    Interval(f64),
    Quit,
}

/// The next interval step up (`up`) or down from `cur`.
fn step_interval(cur: f64, up: bool) -> f64 {
    if up {
        INTERVAL_STEPS
            .iter()
            .copied()
            .find(|s| *s > cur + 1e-9)
            .unwrap_or(INTERVAL_STEPS[INTERVAL_STEPS.len() - 1])
    } else {
        INTERVAL_STEPS
            .iter()
            .rev()
            .copied()
            .find(|s| *s < cur - 1e-9)
            .unwrap_or(INTERVAL_STEPS[0])
    }
}

fn set_sort(st: &mut ViewState, c: Column) {
    st.sort = c;
    // Numbers: biggest first; names and PIDs: A to Z.
    st.descending = !c.is_text();
}

fn move_selection(st: &mut ViewState, visible: &[u32], delta: isize) {
    if visible.is_empty() {
        st.selected = None;
        return;
    }
    let cur = st
        .selected
        .and_then(|p| visible.iter().position(|v| *v == p));
    let next = match cur {
        None => 0,
        Some(i) => (i as isize + delta).clamp(0, visible.len() as isize - 1) as usize,
    };
    st.selected = Some(visible[next]);
}

/// Applies one key. `visible` is the process list in screen order; `page` the number
/// of rows a page holds.
fn on_key(
    st: &mut ViewState,
    key: KeyEvent,
    visible: &[u32],
    interval: f64,
    page: usize,
) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::Nothing;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if let Some(input) = &mut st.input {
        match (input, key.code) {
            (Input::Filter(t), KeyCode::Char(c)) => t.push(c),
            (Input::Interval(t), KeyCode::Char(c)) if c.is_ascii_digit() || c == '.' => t.push(c),
            (Input::Filter(t) | Input::Interval(t), KeyCode::Backspace) => {
                t.pop();
            }
            (Input::Filter(t), KeyCode::Enter) => {
                st.filter = t.trim().to_string();
                st.input = None;
            }
            (Input::Interval(t), KeyCode::Enter) => {
                let v = t.parse::<f64>().ok();
                st.input = None;
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    return Action::Interval(v.clamp(MIN_INTERVAL, MAX_INTERVAL));
                }
            }
            (Input::Filter(_), KeyCode::Esc) => {
                st.filter.clear();
                st.input = None;
            }
            (Input::Interval(_), KeyCode::Esc) => st.input = None,
            _ => return Action::Nothing,
        }
        return Action::Redraw;
    }
    if st.help {
        return match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('?') | KeyCode::Esc | KeyCode::Enter => {
                st.help = false;
                Action::Redraw
            }
            _ => Action::Nothing,
        };
    }
    match key.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Char('?') | KeyCode::Char('h') => st.help = true,
        KeyCode::Char('s') | KeyCode::Right => set_sort(st, st.sort.next()),
        KeyCode::Left => set_sort(st, st.sort.prev()),
        KeyCode::Char('r') => st.descending = !st.descending,
        KeyCode::Char('f') | KeyCode::Char('/') => {
            st.input = Some(Input::Filter(st.filter.clone()));
        }
        KeyCode::Char('p') | KeyCode::Char(' ') => st.paused = !st.paused,
        KeyCode::Char('d') => st.input = Some(Input::Interval(String::new())),
        KeyCode::Char('+') | KeyCode::Char('=') => {
            return Action::Interval(step_interval(interval, true));
        }
        KeyCode::Char('-') => return Action::Interval(step_interval(interval, false)),
        KeyCode::Up => move_selection(st, visible, -1),
        KeyCode::Down => move_selection(st, visible, 1),
        KeyCode::PageUp => move_selection(st, visible, -(page.max(1) as isize)),
        KeyCode::PageDown => move_selection(st, visible, page.max(1) as isize),
        KeyCode::Home => move_selection(st, visible, -(visible.len() as isize)),
        KeyCode::End => move_selection(st, visible, visible.len() as isize),
        KeyCode::Enter if st.drill.is_none() => {
            if st.selected.is_none_or(|p| !visible.contains(&p)) {
                st.selected = visible.first().copied();
            }
            if let Some(p) = st.selected {
                st.drill = Some(p);
                return Action::Drill;
            }
        }
        KeyCode::Esc | KeyCode::Backspace if st.drill.is_some() => st.drill = None,
        KeyCode::Esc if !st.filter.is_empty() => st.filter.clear(),
        _ => return Action::Nothing,
    }
    Action::Redraw
}

/// Reads terminal events on a thread and forwards them.
struct InputThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl InputThread {
    fn spawn(tx: mpsc::UnboundedSender<Event>) -> InputThread {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => match event::read() {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    },
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
        });
        InputThread {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for InputThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Collects the drill-down's facts for process `pid`: sock_diag sockets, and per socket
/// id what the lookup and sock_diag know.
fn drill_facts(pid: u32, snap: &Snapshot, lookup: &dyn SockLookup) -> DrillFacts {
    let mut d = DrillFacts::default();
    let diag = match sockdiag::dump_tcp() {
        Ok(v) => v,
        Err(e) => {
            d.diag_error = Some(e.to_string());
            Vec::new()
        }
    };
    if d.diag_error.is_none() && !crate::kernel::Privileges::current().cap_net_admin {
        d.diag_error =
            Some("kernel TLS details need CAP_NET_ADMIN; run as root to see them".into());
    }
    if let Some(row) = snap.procs.iter().find(|r| r.pid == pid) {
        for c in &row.conns {
            d.conns.insert(c.sock, facts_for(c.sock, lookup, &diag));
        }
    }
    d.lookup_available = !d.conns.is_empty()
        && d.conns
            .values()
            .all(|f| f.endpoints.is_some_and(|e| e.peer.is_some()));
    d.sessions = sessions_of(&sockdiag::socket_inodes(pid), &diag);
    d
}

fn timer(secs: f64) -> tokio::time::Interval {
    let d = Duration::from_secs_f64(secs);
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Runs the interactive view until `q`, Ctrl-C, SIGINT or SIGTERM.
pub async fn run(
    mut s: Session,
    mut header: Header,
    mut load: Option<LoadChild>,
) -> anyhow::Result<()> {
    let mut model = Model::new(s.rules(), clock::now_ns());
    let mut snap = Snapshot::default();
    let mut st = ViewState::default();
    let mut drill = DrillFacts::default();
    // Probes the kernel refused stay on the status line; other news replaces the last.
    let lost: Vec<String> = s.tracer().lost().iter().map(|l| l.to_string()).collect();
    let mut notice = header.status.take();
    header.status = Some(
        [notice.as_deref(), Some("collecting the first interval...")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
    );

    let mut guard = TermGuard::enter().context("starting the terminal UI")?;
    let (tx, mut keys) = mpsc::unbounded_channel();
    let _input = InputThread::spawn(tx);
    let mut window = timer(header.interval_s);
    let mut dirty = true;
    let mut keys_open = true;
    loop {
        if dirty {
            guard
                .terminal
                .draw(|f| view::draw(f, &snap, &header, &st, &drill))
                .context("drawing the screen")?;
            dirty = false;
        }
        tokio::select! {
            u = s.next() => match u? {
                Update::Events(v) => model.ingest_all(&v),
                Update::Notices(n) => {
                    let news = lost.iter().cloned().chain(n.iter().map(|n| n.to_string()));
                    notice = Some(news.collect::<Vec<_>>().join("; "));
                }
                Update::Tick => {
                    if let Some(l) = &mut load
                        && let Some(msg) = l.check()
                    {
                        notice = Some(msg);
                    }
                    let status = [load.as_ref().map(LoadChild::describe), notice.clone()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ");
                    let status = (!status.is_empty()).then_some(status);
                    if status != header.status {
                        header.status = status;
                        dirty = true;
                    }
                }
                Update::Stop(_) => break,
            },
            _ = window.tick() => {
                model.ingest_all(&s.drain_now());
                model.ingest_aggregates(&s.read_aggregates()?);
                model.set_counts(s.counts());
                let mut fresh = model.close_window(clock::now_ns());
                // The process being looked at stays (its charts) until Esc.
                model.forget_exited(&mut fresh, |pid| st.drill != Some(pid) && !procs::alive(pid));
                if !st.paused {
                    snap = fresh;
                    header.tls_stat = crate::kernel::read_tls_stat();
                    if let Some(pid) = st.drill {
                        drill = drill_facts(pid, &snap, s.tracer());
                    }
                    dirty = true;
                }
            }
            ev = keys.recv(), if keys_open => {
                match ev {
                    Some(Event::Key(k)) => {
                        let visible: Vec<u32> =
                            visible_rows(&snap, &st).iter().map(|r| r.pid).collect();
                        let page = guard
                            .terminal
                            .size()
                            .map(|sz| usize::from(sz.height.saturating_sub(9)))
                            .unwrap_or(10);
                        match on_key(&mut st, k, &visible, header.interval_s, page) {
                            Action::Nothing => {}
                            Action::Redraw => dirty = true,
                            Action::Drill => {
                                if let Some(pid) = st.drill {
                                    drill = drill_facts(pid, &snap, s.tracer());
                                }
                                dirty = true;
                            }
                            Action::Interval(v) => {
                                header.interval_s = v;
                                window = timer(v);
                                dirty = true;
                            }
                            Action::Quit => break,
                        }
                    }
                    Some(Event::Resize(..)) => {
                        guard.terminal.autoresize().context("resizing")?;
                        dirty = true;
                    }
                    Some(_) => {}
                    // The reader stopped (no terminal input any more): keep tracing
                    // until a signal arrives.
                    None => keys_open = false,
                }
            }
        }
    }
    drop(guard);
    // Probes are detached when the session drops; the load child is stopped.
    drop(s);
    drop(load);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn press(st: &mut ViewState, codes: &[KeyCode], visible: &[u32]) -> Vec<Action> {
        codes
            .iter()
            .map(|c| on_key(st, key(*c), visible, 1.0, 10))
            .collect()
    }

    #[test]
    fn quit_keys() {
        let mut st = ViewState::default();
        assert_eq!(press(&mut st, &[KeyCode::Char('q')], &[]), [Action::Quit]);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        st.input = Some(Input::Filter(String::new()));
        assert_eq!(on_key(&mut st, ctrl_c, &[], 1.0, 10), Action::Quit);
    }

    #[test]
    fn sort_keys() {
        let mut st = ViewState::default();
        press(&mut st, &[KeyCode::Char('s')], &[]);
        assert_eq!((st.sort, st.descending), (Column::TlsIn, true));
        press(&mut st, &[KeyCode::Char('r')], &[]);
        assert!(!st.descending);
        press(&mut st, &[KeyCode::Left, KeyCode::Left], &[]);
        assert_eq!(st.sort, Column::Path);
        assert!(!st.descending, "text columns sort A to Z");
        press(&mut st, &[KeyCode::Right, KeyCode::Right], &[]);
        assert_eq!((st.sort, st.descending), (Column::TlsIn, true));
    }

    #[test]
    fn filter_input() {
        let mut st = ViewState::default();
        press(
            &mut st,
            &[
                KeyCode::Char('f'),
                KeyCode::Char('n'),
                KeyCode::Char('g'),
                KeyCode::Char('x'),
                KeyCode::Backspace,
            ],
            &[],
        );
        assert_eq!(st.input, Some(Input::Filter("ng".into())));
        assert_eq!(st.filter, "", "not applied before Enter");
        press(&mut st, &[KeyCode::Enter], &[]);
        assert_eq!((st.filter.as_str(), st.input.is_none()), ("ng", true));
        // `q` while typing is a letter, not quit.
        press(&mut st, &[KeyCode::Char('f'), KeyCode::Char('q')], &[]);
        assert_eq!(st.input, Some(Input::Filter("ngq".into())));
        press(&mut st, &[KeyCode::Esc], &[]);
        assert_eq!((st.filter.as_str(), st.input.is_none()), ("", true));
    }

    #[test]
    fn pause_help_and_interval() {
        let mut st = ViewState::default();
        press(&mut st, &[KeyCode::Char('p')], &[]);
        assert!(st.paused);
        press(&mut st, &[KeyCode::Char('?')], &[]);
        assert!(st.help);
        // Keys other than ?/Esc/q do nothing while help is open.
        assert_eq!(
            press(&mut st, &[KeyCode::Char('s')], &[]),
            [Action::Nothing]
        );
        press(&mut st, &[KeyCode::Esc], &[]);
        assert!(!st.help);
        assert_eq!(
            press(&mut st, &[KeyCode::Char('+')], &[]),
            [Action::Interval(2.0)]
        );
        assert_eq!(
            press(&mut st, &[KeyCode::Char('-')], &[]),
            [Action::Interval(0.5)]
        );
        let acts = press(
            &mut st,
            &[
                KeyCode::Char('d'),
                KeyCode::Char('2'),
                KeyCode::Char('x'),
                KeyCode::Char('.'),
                KeyCode::Char('5'),
                KeyCode::Enter,
            ],
            &[],
        );
        assert_eq!(acts.last(), Some(&Action::Interval(2.5)));
        let acts = press(
            &mut st,
            &[KeyCode::Char('d'), KeyCode::Char('0'), KeyCode::Enter],
            &[],
        );
        assert_eq!(acts.last(), Some(&Action::Interval(MIN_INTERVAL)));
        assert_eq!(step_interval(10.0, true), 10.0);
        assert_eq!(step_interval(0.25, false), 0.25);
        assert_eq!(step_interval(1.5, true), 2.0);
    }

    #[test]
    fn selection_and_drill_down() {
        let mut st = ViewState::default();
        let vis = [30, 10, 20];
        press(&mut st, &[KeyCode::Down], &vis);
        assert_eq!(st.selected, Some(30));
        press(
            &mut st,
            &[KeyCode::Down, KeyCode::Down, KeyCode::Down],
            &vis,
        );
        assert_eq!(st.selected, Some(20), "stops at the end");
        press(&mut st, &[KeyCode::Home], &vis);
        assert_eq!(st.selected, Some(30));
        press(&mut st, &[KeyCode::PageDown], &vis);
        assert_eq!(st.selected, Some(20));
        press(&mut st, &[KeyCode::Up], &vis);
        assert_eq!(st.selected, Some(10));
        assert_eq!(press(&mut st, &[KeyCode::Enter], &vis), [Action::Drill]);
        assert_eq!(st.drill, Some(10));
        press(&mut st, &[KeyCode::Esc], &vis);
        assert_eq!(st.drill, None);
        // Enter with nothing selected drills into the top row.
        let mut st = ViewState::default();
        press(&mut st, &[KeyCode::Enter], &vis);
        assert_eq!(st.drill, Some(30));
        // Nothing to drill into.
        let mut st = ViewState::default();
        assert_eq!(press(&mut st, &[KeyCode::Enter], &[]), [Action::Redraw]);
        assert_eq!(st.drill, None);
    }
}
