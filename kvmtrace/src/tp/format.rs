//! Parser for tracefs `events/<system>/<name>/format` files.

use crate::error::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    /// The event's own fields (the `common_*` header fields are left out).
    pub fields: Vec<Field>,
}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses a format file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Format, Error> {
    let bad = |why: String| Error::BadFormat {
        path: origin.to_string(),
        why,
    };
    let mut name = None;
    let mut id = None;
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("ID:") {
            id = Some(v.trim().parse().map_err(|_| bad(format!("bad ID `{v}`")))?);
        } else if line.starts_with("field:") {
            let field = parse_field(line).ok_or_else(|| bad(format!("bad field line `{line}`")))?;
            if !field.name.starts_with("common_") {
                fields.push(field);
            }
        }
    }
    Ok(Format {
        name: name.ok_or_else(|| bad("no `name:` line".into()))?,
        id: id.ok_or_else(|| bad("no `ID:` line".into()))?,
        fields,
    })
}

/// `field:unsigned int exit_reason; offset:8; size:4; signed:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':')?;
        match key {
            "field" => decl = Some(value.trim()),
            "offset" => offset = value.parse().ok(),
            "size" => size = value.parse().ok(),
            "signed" => signed = Some(value == "1"),
            _ => {}
        }
    }
    // The name is the declaration's last word, without an array suffix: `char comm[16]` -> comm.
    let last = decl?.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    Some(Field {
        name: name.to_string(),
        offset: offset?,
        size: size?,
        signed: signed.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_618: &str = include_str!("../../tests/data/formats/6.18/kvm_exit.format");
    const ENTRY_61: &str = include_str!("../../tests/data/formats/6.1/kvm_entry.format");
    const ENTRY_618: &str = include_str!("../../tests/data/formats/6.18/kvm_entry.format");

    fn f(name: &str, offset: u32, size: u32, signed: bool) -> Field {
        Field {
            name: name.into(),
            offset,
            size,
            signed,
        }
    }

    #[test]
    fn parses_kvm_exit_6_18() {
        let fmt = parse(EXIT_618, "kvm_exit").unwrap();
        assert_eq!(fmt.name, "kvm_exit");
        assert_eq!(
            fmt.fields,
            vec![
                f("exit_reason", 8, 4, false),
                f("guest_rip", 16, 8, false),
                f("isa", 24, 4, false),
                f("info1", 32, 8, false),
                f("info2", 40, 8, false),
                f("intr_info", 48, 4, false),
                f("error_code", 52, 4, false),
                f("vcpu_id", 56, 4, false),
                f("requests", 64, 8, false),
            ]
        );
    }

    #[test]
    fn kvm_entry_differs_between_6_1_and_6_18() {
        let old = parse(ENTRY_61, "6.1").unwrap();
        let new = parse(ENTRY_618, "6.18").unwrap();
        assert_eq!(old.id, 1428);
        let names = |f: &Format| f.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&old), ["vcpu_id", "rip", "immediate_exit"]);
        assert_eq!(
            names(&new),
            [
                "vcpu_id",
                "rip",
                "immediate_exit",
                "intr_info",
                "error_code"
            ]
        );
        assert_eq!(
            new.field("immediate_exit"),
            Some(&f("immediate_exit", 24, 1, false))
        );
    }

    #[test]
    fn parses_arrays_and_signedness() {
        let text = "name: x\nID: 7\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;\n\tfield:int errno;\toffset:24;\tsize:4;\tsigned:1;\n";
        let fmt = parse(text, "x").unwrap();
        assert_eq!(
            fmt.fields,
            vec![f("comm", 8, 16, true), f("errno", 24, 4, true)]
        );
    }

    #[test]
    fn rejects_garbage_with_the_path() {
        let err = parse("hello", "/x/format").unwrap_err().to_string();
        assert!(err.contains("/x/format"), "{err}");
        let err = parse("name: a\nID: 1\n\tfield:int x;\toffset:zz;\tsize:4;\n", "f").unwrap_err();
        assert!(err.to_string().contains("bad field line"), "{err}");
    }
}
