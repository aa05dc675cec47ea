//! What the person at `kvmtrace top` has chosen: where in the tree they are, the selected row,
//! the sort, the name filter, pause, the interval and help. Keys change it; nothing here draws or
//! traces, so every key is tested on plain values.

use std::time::Duration;

use super::frame::{Frame, Node};

/// Row order, cycled with `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// Exits or events per second (plus VMM round trips for VMs and vCPUs).
    Rate,
    /// Handling time (reasons) or CPU (VMs, vCPUs).
    Time,
    P99,
    Cpu,
}

impl Sort {
    pub fn label(self) -> &'static str {
        match self {
            Sort::Rate => "rate",
            Sort::Time => "time",
            Sort::P99 => "p99",
            Sort::Cpu => "cpu",
        }
    }

    fn next(self) -> Sort {
        match self {
            Sort::Rate => Sort::Time,
            Sort::Time => Sort::P99,
            Sort::P99 => Sort::Cpu,
            Sort::Cpu => Sort::Rate,
        }
    }

    fn value(self, n: &Node) -> f64 {
        let cpu = n.cpu.map(|c| c.total);
        match self {
            Sort::Rate => n.per_sec + n.vmm_per_sec.unwrap_or(0.0),
            Sort::Time => n.time_pct.or(cpu).unwrap_or(0.0),
            Sort::P99 => n.p99_ns.unwrap_or(0) as f64,
            Sort::Cpu => cpu.or(n.time_pct).unwrap_or(0.0),
        }
    }
}

/// A key press, as the terminal layer decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    Left,
    Right,
    CtrlC,
}

pub const MIN_INTERVAL: Duration = Duration::from_millis(250);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Ui {
    /// Ids of the rows drilled into, from the VM down (empty: the VM list).
    pub path: Vec<String>,
    /// The selected row's id at the current level.
    pub selected: Option<String>,
    pub sort: Sort,
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: bool,
    pub paused: bool,
    pub help: bool,
    pub interval: Duration,
    pub quit: bool,
}

/// The deepest level: VM, vCPU, reason, key.
const LEVELS: usize = 4;

impl Ui {
    pub fn new(interval: Duration) -> Ui {
        Ui {
            path: Vec::new(),
            selected: None,
            sort: Sort::Rate,
            filter: String::new(),
            editing: false,
            paused: false,
            help: false,
            interval,
            quit: false,
        }
    }

    /// The rows at the current level of `frame`, filtered and sorted; empty when the row drilled
    /// into is gone (its VM stopped: [`Ui::settle`] moves up).
    pub fn rows<'f>(&self, frame: &'f Frame) -> Vec<&'f Node> {
        let mut level: &[Node] = &frame.vms;
        for id in &self.path {
            match level.iter().find(|n| &n.id == id) {
                Some(n) => level = &n.children,
                None => return Vec::new(),
            }
        }
        let filter = self.filter.to_lowercase();
        let mut rows: Vec<&Node> = level
            .iter()
            .filter(|n| filter.is_empty() || n.name.to_lowercase().contains(&filter))
            .collect();
        rows.sort_by(|a, b| {
            self.sort
                .value(b)
                .total_cmp(&self.sort.value(a))
                .then_with(|| a.name.cmp(&b.name))
        });
        rows
    }

    /// The nodes drilled into, from the VM down (for the title line).
    pub fn trail<'f>(&self, frame: &'f Frame) -> Vec<&'f Node> {
        let mut out = Vec::new();
        let mut level: &[Node] = &frame.vms;
        for id in &self.path {
            let Some(n) = level.iter().find(|n| &n.id == id) else {
                break;
            };
            out.push(n);
            level = &n.children;
        }
        out
    }

    /// After a new frame: climb out of rows that disappeared (a VM that stopped) and keep the
    /// selection on a row that exists.
    pub fn settle(&mut self, frame: &Frame) {
        while self.trail(frame).len() < self.path.len() {
            self.path.pop();
        }
        let rows = self.rows(frame);
        if !rows.iter().any(|n| Some(&n.id) == self.selected.as_ref()) {
            self.selected = rows.first().map(|n| n.id.clone());
        }
    }

    /// Applies one key to the state.
    pub fn key(&mut self, key: Key, frame: &Frame) {
        if self.editing {
            match key {
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() => self.filter.push(c),
                Key::CtrlC => self.quit = true,
                _ => {}
            }
            self.settle(frame);
            return;
        }
        if self.help {
            // Any key closes the help; q and Ctrl-C still quit.
            self.help = false;
            self.quit = matches!(key, Key::Char('q') | Key::CtrlC);
            return;
        }
        match key {
            Key::Char('q') | Key::CtrlC => self.quit = true,
            Key::Char('?') | Key::Char('h') => self.help = true,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            Key::Char('p') | Key::Char(' ') => self.paused = !self.paused,
            Key::Char('+') => self.interval = (self.interval * 2).min(MAX_INTERVAL),
            Key::Char('-') => self.interval = (self.interval / 2).max(MIN_INTERVAL),
            Key::Up | Key::Char('k') => self.move_selection(frame, -1),
            Key::Down | Key::Char('j') => self.move_selection(frame, 1),
            Key::Enter | Key::Right | Key::Char('l') => self.drill(frame),
            Key::Esc | Key::Backspace | Key::Left => self.up(),
            _ => {}
        }
        self.settle(frame);
    }

    fn move_selection(&mut self, frame: &Frame, by: isize) {
        let rows = self.rows(frame);
        if rows.is_empty() {
            return;
        }
        let at = rows
            .iter()
            .position(|n| Some(&n.id) == self.selected.as_ref())
            .unwrap_or(0);
        let to = (at as isize + by).clamp(0, rows.len() as isize - 1) as usize;
        self.selected = Some(rows[to].id.clone());
    }

    fn drill(&mut self, frame: &Frame) {
        if self.path.len() + 1 >= LEVELS {
            return;
        }
        let rows = self.rows(frame);
        let selected = rows
            .iter()
            .find(|n| Some(&n.id) == self.selected.as_ref())
            .or(rows.first());
        let Some(row) = selected else {
            return;
        };
        if row.children.is_empty() {
            return;
        }
        self.path.push(row.id.clone());
        self.selected = None;
        self.filter.clear();
    }

    fn up(&mut self) {
        if !self.filter.is_empty() {
            self.filter.clear();
            return;
        }
        if let Some(id) = self.path.pop() {
            self.selected = Some(id);
        }
    }
}
