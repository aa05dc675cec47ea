//! Renderer tests on exact output (issue #10): every format and every section, from reports the
//! real builder makes of synthetic recordings ([`fixture`]).

mod csv;
mod diff;
mod fixture;
mod flamegraph;
mod folded;
mod json;
mod recording;
mod text;

/// What `render` writes, as text.
fn output(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}
