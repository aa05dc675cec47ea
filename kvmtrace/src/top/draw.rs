//! Draws one screen of `kvmtrace top` with ratatui: a title line, where the person is in the
//! tree, the table of the current level (its columns depend on the level), the selected row's
//! sparkline, notes, and the help over it all when asked.

use ratatui::{
    Frame as Screen,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState},
};

use super::{
    frame::{Frame, Node},
    ui::Ui,
};

pub const HELP: &[&str] = &[
    "Enter, Right   drill into the selected row (VM -> vCPU -> reason -> keys)",
    "Esc, Left      back up (or clear the filter)",
    "Up/Down, j/k   select a row",
    "s              sort by: rate, time, p99, cpu",
    "/              filter rows by name (Enter keeps it, Esc clears it)",
    "p, Space       pause / resume",
    "+ / -          double / halve the interval",
    "?              this help (any key closes it)",
    "q, Ctrl-C      quit",
];

/// Draws `frame` as `ui` wants it onto `screen`.
pub fn draw(screen: &mut Screen, frame: &Frame, ui: &Ui) {
    let [title, trail, table, spark, notes] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(4),
        Constraint::Length(1),
    ])
    .areas(screen.area());
    screen.render_widget(Paragraph::new(title_line(frame, ui)), title);
    screen.render_widget(Paragraph::new(trail_line(frame, ui)), trail);
    let rows = ui.rows(frame);
    let (header, widths) = columns(ui.path.len());
    let body: Vec<Row> = rows
        .iter()
        .map(|n| Row::new(cells(n, ui.path.len())))
        .collect();
    let mut state = TableState::default();
    state.select(
        rows.iter()
            .position(|n| Some(&n.id) == ui.selected.as_ref()),
    );
    let empty = rows.is_empty();
    let table_widget = Table::new(body, widths)
        .header(
            Row::new(header.iter().map(|h| Cell::from(*h)))
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    screen.render_stateful_widget(table_widget, table, &mut state);
    if empty {
        let what = if frame.vms.is_empty() {
            "No VMs with events yet."
        } else {
            "No rows here."
        };
        screen.render_widget(
            Paragraph::new(what),
            Rect {
                y: table.y + 1,
                height: 1,
                ..table
            },
        );
    }
    if let Some(sel) = rows.iter().find(|n| Some(&n.id) == ui.selected.as_ref()) {
        let what = if ui.path.len() < 2 {
            "exits + VMM exits"
        } else {
            "events"
        };
        let title = format!(
            " {}: {what} per second, last {} intervals ",
            sel.name,
            sel.history.len()
        );
        screen.render_widget(
            Sparkline::default()
                .block(Block::new().borders(Borders::TOP).title(title))
                .data(&sel.history),
            spark,
        );
    }
    screen.render_widget(Paragraph::new(notes_line(frame)), notes);
    if ui.help {
        let area = centered(screen.area(), 78, HELP.len() as u16 + 2);
        screen.render_widget(Clear, area);
        screen.render_widget(
            Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
                .block(Block::bordered().title(" kvmtrace top: keys ")),
            area,
        );
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn title_line(frame: &Frame, ui: &Ui) -> String {
    let mut t = format!(
        "kvmtrace top - {:.1} s, every {}, sort: {}",
        frame.at_secs,
        humantime::format_duration(ui.interval),
        ui.sort.label()
    );
    if ui.paused {
        t.push_str(", PAUSED");
    }
    if ui.editing || !ui.filter.is_empty() {
        t.push_str(&format!(
            ", filter: {}{}",
            ui.filter,
            if ui.editing { "_" } else { "" }
        ));
    }
    t.push_str("   (? help, q quit)");
    t
}

fn trail_line(frame: &Frame, ui: &Ui) -> String {
    let mut parts = vec!["VMs".to_string()];
    for (depth, n) in ui.trail(frame).iter().enumerate() {
        parts.push(if depth == 0 {
            format!("{} (pid {})", n.name, n.id)
        } else {
            n.name.clone()
        });
    }
    parts.join(" > ")
}

fn notes_line(frame: &Frame) -> String {
    let mut parts = Vec::new();
    if frame.lost > 0 {
        parts.push(format!("{} events lost", frame.lost));
    }
    parts.extend(frame.notes.iter().cloned());
    parts.join("; ")
}

/// Header cells and widths of the table at tree depth `depth`.
fn columns(depth: usize) -> (&'static [&'static str], Vec<Constraint>) {
    use Constraint::{Length, Min};
    match depth {
        0 => (
            &[
                "NAME", "PID", "vCPUs", "EXITS/s", "VMM/s", "CPU%", "GUEST%", "EXITS%", "VMM%",
                "BLOCKED%", "STORMS",
            ],
            vec![
                Min(12),
                Length(8),
                Length(5),
                Length(9),
                Length(9),
                Length(6),
                Length(6),
                Length(6),
                Length(6),
                Length(8),
                Min(10),
            ],
        ),
        1 => (
            &[
                "vCPU", "EXITS/s", "VMM/s", "CPU%", "GUEST%", "EXITS%", "VMM%", "BLOCKED%",
            ],
            vec![
                Min(20),
                Length(9),
                Length(9),
                Length(6),
                Length(6),
                Length(6),
                Length(6),
                Length(8),
            ],
        ),
        2 => (
            &["REASON", "EVENTS/s", "p50", "p99", "TIME%"],
            vec![Min(30), Length(10), Length(9), Length(9), Length(6)],
        ),
        _ => (
            &["KEY", "EVENTS/s", "p50", "p99"],
            vec![Min(30), Length(10), Length(9), Length(9)],
        ),
    }
}

/// The cells of row `n` at depth `depth`.
pub fn cells(n: &Node, depth: usize) -> Vec<String> {
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    let cpu = n.cpu.unwrap_or_default();
    let split = [
        pct(n.cpu.map(|c| c.total)),
        pct(cpu.guest),
        pct(cpu.exits),
        pct(n.cpu.map(|c| c.vmm)),
        pct(n.cpu.map(|c| c.blocked)),
    ];
    let rate = |v: f64| format!("{v:.0}");
    match depth {
        0 => [
            vec![
                n.name.clone(),
                n.id.clone(),
                n.children.len().to_string(),
                rate(n.per_sec),
                rate(n.vmm_per_sec.unwrap_or(0.0)),
            ],
            split.to_vec(),
            vec![n.storms.join("; ")],
        ]
        .concat(),
        1 => [
            vec![
                n.name.clone(),
                rate(n.per_sec),
                rate(n.vmm_per_sec.unwrap_or(0.0)),
            ],
            split.to_vec(),
        ]
        .concat(),
        2 => vec![
            n.name.clone(),
            rate(n.per_sec),
            ns(n.p50_ns),
            ns(n.p99_ns),
            pct(n.time_pct),
        ],
        _ => vec![n.name.clone(), rate(n.per_sec), ns(n.p50_ns), ns(n.p99_ns)],
    }
}

/// A latency for a narrow column: 850ns, 12.3us, 4.1ms, 2.0s.
pub fn ns(v: Option<u64>) -> String {
    let Some(v) = v else { return "-".into() };
    let v = v as f64;
    if v < 1e3 {
        format!("{v:.0}ns")
    } else if v < 1e6 {
        format!("{:.1}us", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1}ms", v / 1e6)
    } else {
        format!("{:.1}s", v / 1e9)
    }
}
