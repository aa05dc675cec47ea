//! SVG flamegraphs of folded stacks, with inferno; and differential ones for `diff`.

use std::io;

use super::Weight;

fn options(title: &str, weight: Weight) -> inferno::flamegraph::Options<'static> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = match weight {
        Weight::Time => "ns".into(),
        Weight::Count => "exits".into(),
        Weight::Samples => "samples".into(),
    };
    opts.name_type = "Frame:".into();
    opts.colors =
        inferno::flamegraph::color::Palette::Basic(inferno::flamegraph::color::BasicPalette::Hot);
    opts
}

/// Writes an SVG of `folded` lines. An empty profile still gives a valid SVG, with a note.
pub fn render(
    folded: &[String],
    title: &str,
    weight: Weight,
    out: &mut impl io::Write,
) -> io::Result<()> {
    let mut opts = options(title, weight);
    if folded.is_empty() {
        opts.subtitle = Some("no data".into());
        return inferno::flamegraph::from_lines(&mut opts, ["no_data 1"].iter().copied(), out)
            .map_err(io::Error::other);
    }
    inferno::flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), out)
        .map_err(io::Error::other)
}

/// Folded lines `stack before after` from two profiles (inferno's differential format).
pub fn differential_folded(before: &[String], after: &[String]) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let join = |l: &[String]| l.join("\n").into_bytes();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        &join(before)[..],
        &join(after)[..],
        &mut out,
    )?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A differential flamegraph: frame widths from `after`, red where it grew, blue where it shrank.
/// Rates are compared, as in the diff table: `before`'s weights are scaled to `after`'s duration
/// (a key at the same rate in a recording twice as long is neither red nor blue).
pub fn render_differential(
    (before, before_secs): (&[String], f64),
    (after, after_secs): (&[String], f64),
    title: &str,
    weight: Weight,
    out: &mut impl io::Write,
) -> io::Result<()> {
    let factor = if before_secs > 0.0 {
        after_secs / before_secs
    } else {
        1.0
    };
    let lines = differential_folded(&super::folded::scaled(before, factor), after)?;
    let mut opts = options(title, weight);
    if lines.is_empty() {
        opts.subtitle = Some("no data".into());
        return inferno::flamegraph::from_lines(&mut opts, ["no_data 1 1"].iter().copied(), out)
            .map_err(io::Error::other);
    }
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(io::Error::other)
}
