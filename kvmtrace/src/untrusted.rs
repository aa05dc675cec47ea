//! Text that other people control, made safe to print: VM names (QEMU `-name`, libvirt, systemd
//! machines), thread names (`comm`) and command lines of other processes, and every string read
//! from a recording file. Any user with /dev/kvm can start a "VM" named `ESC ] 0 ; ... BEL`, and a
//! terminal that prints it raw obeys it (retitles, clears, rewrites lines).
//!
//! The text is escaped once, where it enters kvmtrace ([`crate::host::vm`] for /proc and /run, the
//! recording reader for files), so every format made from it (text, list, JSON, CSV, folded
//! stacks, flamegraphs, diff) shows the same visible form: `\x1b`, `\n`, `\u{202e}`. JSON's own
//! escaping is not relied on: it leaves DEL, C1 controls and bidi overrides raw, and a name
//! that reads differently in `--json` and in the text report would not match between them.
//!
//! Backslashes are kept as they are, so the escaping is not reversible: a name that is literally
//! `a\x1bb` and one with a real ESC both read `a\x1bb`. Two VMs that look alike are already
//! possible with plain names; `-d` reports the ambiguity and `-p PID` picks one.

use std::fmt::Write as _;

/// `s` with every control character replaced by a visible escape: C0 controls (`\t`, `\n`, `\r`,
/// else `\x1b` style), DEL (`\x7f`), C1 controls and the Unicode bidi / line controls that
/// reorder or break displayed text (`\u{202e}` style). Other text, backslashes included, is
/// unchanged, so escaping is idempotent.
pub fn escape(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Bytes from /proc or a file, which need not be UTF-8: invalid sequences become U+FFFD, then
/// [`escape`]. Never panics.
pub fn from_bytes(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(bytes))
}

/// Escapes `s` in place (for strings deserialized from a file).
pub fn escape_in_place(s: &mut String) {
    if s.chars().any(needs_escape) {
        *s = escape(s);
    }
}

/// Characters a terminal may act on instead of showing.
fn needs_escape(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(c,
            '\u{061c}'                  // ARABIC LETTER MARK
            | '\u{200e}' | '\u{200f}'   // LRM, RLM
            | '\u{2028}' | '\u{2029}'   // line and paragraph separators
            | '\u{202a}'..='\u{202e}'   // LRE, RLE, PDF, LRO, RLO
            | '\u{2066}'..='\u{2069}') // LRI, RLI, FSI, PDI
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_become_visible() {
        assert_eq!(
            escape("\u{1b}]0;pwned\u{7}\u{1b}[2Jvm01"),
            "\\x1b]0;pwned\\x07\\x1b[2Jvm01"
        );
        assert_eq!(escape("a\tb\nc\rd\0e\u{7f}"), "a\\tb\\nc\\rd\\x00e\\x7f");
        // C1 CSI (a one-character ESC [ for terminals that take C1) and bidi overrides.
        assert_eq!(escape("x\u{9b}2J"), "x\\u{9b}2J");
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(
            escape("\u{2066}\u{2069}\u{2028}"),
            "\\u{2066}\\u{2069}\\u{2028}"
        );
    }

    #[test]
    fn ordinary_names_are_unchanged_and_escaping_is_idempotent() {
        for s in [
            "vm01",
            "CPU 0/KVM",
            "web-01.example",
            "münchen-vm",
            "a\\x1bb",
            "日本",
            "",
        ] {
            assert_eq!(escape(s), s);
        }
        let once = escape("\u{1b}[31mred\u{9b}\u{202e}");
        assert_eq!(escape(&once), once);
        let mut s = "\u{7}".to_string();
        escape_in_place(&mut s);
        assert_eq!(s, "\\x07");
    }

    #[test]
    fn invalid_utf8_never_panics() {
        assert_eq!(from_bytes(b"vm\xff\xfe01"), "vm\u{fffd}\u{fffd}01");
        assert_eq!(from_bytes(b"\x1b\xc2\x9b"), "\\x1b\\u{9b}");
        assert_eq!(from_bytes(b""), "");
    }
}
