//! The text report's "Hottest host paths per exit reason" section (recordings made with
//! `--stacks`), and the folded lines of `--weight samples`.

use std::io;

use crate::report::stacks::HostStacks;

/// Frames shown per path in the text report, leaf first.
const FRAMES_SHOWN: usize = 6;

pub fn render(hs: &HostStacks, out: &mut impl io::Write) -> io::Result<()> {
    writeln!(
        out,
        "\nHottest host paths per exit reason ({} samples{}; all of them: report --format flamegraph --weight samples)",
        hs.samples,
        losses(hs)
    )?;
    for g in &hs.groups {
        writeln!(
            out,
            "  {} {} {}: {} samples, {:.1} %",
            g.vm, g.state, g.reason, g.samples, g.share_pct
        )?;
        for p in &g.top {
            writeln!(out, "    {:5.1} %  {}", p.share_pct, leaf_first(&p.frames))?;
        }
    }
    Ok(())
}

/// What the sample count leaves out, said in the heading.
fn losses(hs: &HostStacks) -> String {
    let mut out = String::new();
    if hs.lost > 0 {
        out += &format!(
            ", {} more not counted: the kernel's sample map was full",
            hs.lost
        );
    }
    if hs.frames_lost > 0 {
        out += &format!(
            ", {} without their frames: the kernel's stack map was full",
            hs.frames_lost
        );
    }
    out
}

/// `leaf <- caller <- ...`, the innermost frames.
fn leaf_first(frames: &[String]) -> String {
    if frames.is_empty() {
        return "(no frames)".into();
    }
    let mut shown: Vec<&str> = frames
        .iter()
        .rev()
        .take(FRAMES_SHOWN)
        .map(String::as_str)
        .collect();
    if frames.len() > FRAMES_SHOWN {
        shown.push("...");
    }
    shown.join(" <- ")
}

/// Folded lines `VM;vCPU N;reason;state;frames... samples`.
pub fn folded(hs: &HostStacks, frame: impl Fn(&str) -> String) -> Vec<String> {
    hs.all
        .iter()
        .map(|r| {
            let mut parts = vec![
                frame(&r.vm),
                frame(&r.vcpu.named()),
                frame(&r.reason),
                frame(r.state),
            ];
            parts.extend(r.frames.iter().map(|f| frame(f)));
            format!("{} {}", parts.join(";"), r.samples)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_from_the_leaf() {
        let f: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        assert_eq!(leaf_first(&f), "f7 <- f6 <- f5 <- f4 <- f3 <- f2 <- ...");
        assert_eq!(leaf_first(&f[..2]), "f1 <- f0");
        assert_eq!(leaf_first(&[]), "(no frames)");
    }
}
