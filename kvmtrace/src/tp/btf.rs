//! The one kernel structure offset a program needs that no tracepoint format gives: `pid` in
//! `struct task_struct`, from the kernel's BTF, for the raw sched_switch program (its
//! arguments are the two tasks, not their pids).
//!
//! A scan of the BTF's type section for one struct, not a parse of every type: the kernel's
//! BTF holds ~150 000 types, and building them all (btfparse) cost ~225 ms at each start of
//! `record`, `serve` or `top` in a release build (~1 s in a debug build), where this scan takes
//! 3-7 ms and holds the file and one index per type (~10 MB at peak). aya parses the same file but keeps its members private. The layout read here
//! is the kernel's uapi (`include/uapi/linux/btf.h`, Documentation/bpf/btf.rst); the tests
//! check it against btfparse on the running kernel.

use std::path::Path;

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The byte offset of `task_struct.pid` in the BTF at `path`; None where there is no BTF or
/// it does not say (the classic sched_switch program is attached then).
pub fn task_pid_offset(path: &Path) -> Option<u32> {
    member_offset(&std::fs::read(path).ok()?, "task_struct", "pid")
}

/// The byte offset of member `member` in struct `name`, looked for in anonymous struct and union
/// members too (as C sees them); None if the BTF is malformed, has no such struct or member, or
/// the member is a bitfield or not byte-aligned (not a plain field a program can load).
pub fn member_offset(btf: &[u8], name: &str, member: &str) -> Option<u32> {
    let types = Types::scan(btf)?;
    let id = (1..types.starts.len())
        .find(|&id| types.kind(id) == Some(KIND_STRUCT) && types.name(id) == Some(name))?;
    let mut budget = MAX_MEMBERS_VISITED;
    let bits = types.member_bits(id, member, 0, &mut budget)?;
    (bits % 8 == 0).then_some(bits / 8)
}

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
const TYPE_HEADER: usize = 12;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const MEMBER_SIZE: usize = 12;
/// Anonymous members nest a few levels in practice; deeper is taken as malformed (and stops
/// a cycle in a corrupt file).
const MAX_NESTING: u32 = 8;
/// Members looked at in one search, at most: task_struct and its anonymous members have a few
/// hundred; a corrupt file whose anonymous members fan out into each other stops here.
const MAX_MEMBERS_VISITED: u32 = 100_000;

/// The type and string sections of a BTF blob, with where each type starts (indexed by id; id
/// 0 is void and has no entry of its own).
struct Types<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    starts: Vec<usize>,
}

impl<'a> Types<'a> {
    fn scan(btf: &'a [u8]) -> Option<Self> {
        if u16::from_ne_bytes(btf.get(0..2)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let hdr_len = u32_at(btf, 4)? as usize;
        if hdr_len < HEADER_MIN {
            return None;
        }
        let section = |off_at: usize| -> Option<&'a [u8]> {
            let start = hdr_len.checked_add(u32_at(btf, off_at)? as usize)?;
            let len = u32_at(btf, off_at + 4)? as usize;
            btf.get(start..start.checked_add(len)?)
        };
        let types = section(8)?;
        let strings = section(16)?;
        let mut starts = vec![usize::MAX];
        let mut at = 0;
        while at < types.len() {
            starts.push(at);
            let info = u32_at(types, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            at = at
                .checked_add(TYPE_HEADER)?
                .checked_add(trailing_bytes(kind_of(info), vlen)?)?;
        }
        (at == types.len()).then_some(Types {
            types,
            strings,
            starts,
        })
    }

    fn info(&self, id: usize) -> Option<u32> {
        u32_at(self.types, self.starts.get(id)?.checked_add(4)?)
    }

    fn kind(&self, id: usize) -> Option<u32> {
        self.info(id).map(kind_of)
    }

    fn name(&self, id: usize) -> Option<&'a str> {
        self.string(u32_at(self.types, *self.starts.get(id)?)?)
    }

    fn string(&self, offset: u32) -> Option<&'a str> {
        let rest = self.strings.get(offset as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// The bit offset of `member` in struct or union `id`, searching anonymous members' own
    /// members too; None for a bitfield, or when `budget` members have been looked at.
    fn member_bits(&self, id: usize, member: &str, depth: u32, budget: &mut u32) -> Option<u32> {
        if depth > MAX_NESTING {
            return None;
        }
        let info = self.info(id)?;
        let start = self.starts.get(id)?.checked_add(TYPE_HEADER)?;
        for i in 0..(info & 0xffff) as usize {
            *budget = budget.checked_sub(1)?;
            let at = start + i * MEMBER_SIZE;
            let name_off = u32_at(self.types, at)?;
            let member_type = u32_at(self.types, at + 4)? as usize;
            let offset = u32_at(self.types, at + 8)?;
            // With kind_flag set, the offset's top 8 bits are the bitfield's size in bits.
            let (bits, bitfield) = if info >> 31 == 1 {
                (offset & 0xff_ffff, offset >> 24 != 0)
            } else {
                (offset, false)
            };
            if name_off == 0 {
                if matches!(self.kind(member_type), Some(KIND_STRUCT | KIND_UNION))
                    && let Some(inner) = self.member_bits(member_type, member, depth + 1, budget)
                {
                    return bits.checked_add(inner);
                }
            } else if self.string(name_off) == Some(member) {
                return (!bitfield).then_some(bits);
            }
        }
        None
    }
}

fn kind_of(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

/// The bytes that follow a type's 12-byte header, by kind (uapi `btf.h`); None for a kind
/// this scan does not know, whose size it cannot tell.
fn trailing_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // INT: its encoding word. VAR: its linkage. DECL_TAG: its component index.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7..=12 | 16 | 18 => 0,
        // ARRAY: element type, index type, count.
        3 => 12,
        // STRUCT, UNION: members; DATASEC: variables; ENUM64: values (12 bytes each).
        4 | 5 | 15 | 19 => vlen * 12,
        // ENUM: values; FUNC_PROTO: parameters (8 bytes each).
        6 | 13 => vlen * 8,
        _ => return None,
    })
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built by hand: `types` as (name, info, size_or_type, trailing words).
    fn blob(types: &[(&str, u32, u32, &[u32])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut type_bytes = Vec::new();
        let name_off = |name: &str, strings: &mut Vec<u8>| -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            off
        };
        for (name, info, size, words) in types {
            let off = name_off(name, &mut strings);
            for word in [off, *info, *size].iter().chain(words.iter()) {
                type_bytes.extend_from_slice(&word.to_ne_bytes());
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [24, 0, type_bytes.len() as u32, type_bytes.len() as u32] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(&strings);
        out
    }

    /// A type's info word: kind, member count, kind_flag.
    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (kind << 24) | vlen | (u32::from(kind_flag) << 31)
    }

    /// `struct task_struct { int state; int pid (at bit offset word `pid_word`); union { int
    /// tgid (at bit 64) }; (at bit 128) }`.
    fn task_struct(pid_word: u32, kind_flag: bool) -> Vec<u8> {
        // `blob` lays the names out in the order the types come: "int" at string offset 1,
        // "task_struct" at 5; the member names are given offsets by three named FWD types
        // (kind 7, nothing trailing) after them: "state" 17, "pid" 23, "tgid" 27.
        blob(&[
            ("int", info(1, 0, false), 4, &[32]), // id 1
            (
                "task_struct",
                info(KIND_STRUCT, 3, kind_flag),
                64,
                &[
                    // id 2
                    17, 1, 0, 23, 1, pid_word, 0, 3, 128,
                ],
            ),
            ("", info(KIND_UNION, 1, false), 16, &[27, 1, 64]), // id 3: anonymous
            ("state", info(7, 0, false), 0, &[]),
            ("pid", info(7, 0, false), 0, &[]),
            ("tgid", info(7, 0, false), 0, &[]),
        ])
    }

    #[test]
    fn finds_a_plain_member_and_one_inside_an_anonymous_union() {
        let btf = task_struct(96, false);
        assert_eq!(member_offset(&btf, "task_struct", "state"), Some(0));
        assert_eq!(member_offset(&btf, "task_struct", "pid"), Some(12));
        assert_eq!(member_offset(&btf, "task_struct", "tgid"), Some(24));
        assert_eq!(member_offset(&btf, "task_struct", "comm"), None);
        assert_eq!(member_offset(&btf, "mm_struct", "pid"), None);
    }

    #[test]
    fn a_bitfield_or_unaligned_member_is_not_a_plain_field() {
        // kind_flag: the top 8 bits are the bitfield size.
        assert_eq!(
            member_offset(&task_struct((3 << 24) | 96, true), "task_struct", "pid"),
            None
        );
        assert_eq!(
            member_offset(&task_struct(96, true), "task_struct", "pid"),
            Some(12)
        );
        assert_eq!(
            member_offset(&task_struct(97, false), "task_struct", "pid"),
            None
        );
    }

    #[test]
    fn malformed_blobs_give_none() {
        let good = task_struct(96, false);
        assert_eq!(member_offset(&[], "task_struct", "pid"), None);
        assert_eq!(member_offset(&good[..30], "task_struct", "pid"), None);
        let mut wrong_magic = good.clone();
        wrong_magic[0] ^= 0xff;
        assert_eq!(member_offset(&wrong_magic, "task_struct", "pid"), None);
        let mut unknown_kind = good.clone();
        unknown_kind[24 + 7] = 31; // id 1's kind byte
        assert_eq!(member_offset(&unknown_kind, "task_struct", "pid"), None);
        for cut in 0..good.len() {
            let _ = member_offset(&good[..cut], "task_struct", "pid");
        }
        assert_eq!(task_pid_offset(Path::new("/nonexistent/vmlinux")), None);
    }

    #[test]
    fn an_anonymous_member_cycle_ends() {
        // A corrupt union whose anonymous member is itself.
        let btf = blob(&[("", info(KIND_UNION, 1, false), 4, &[0, 1, 0])]);
        assert_eq!(member_offset(&btf, "task_struct", "pid"), None);
    }

    #[test]
    fn every_kind_is_stepped_over_by_its_size() {
        // One type of each kind the uapi defines (1-19), then a struct found after them all:
        // a wrong size for any kind would misread every type after it.
        let btf = blob(&[
            ("int", info(1, 0, false), 4, &[32]),             // INT
            ("", info(2, 0, false), 1, &[]),                  // PTR
            ("arr", info(3, 0, false), 0, &[1, 1, 4]),        // ARRAY
            ("e", info(6, 2, false), 4, &[1, 0, 1, 1]),       // ENUM
            ("f", info(7, 0, false), 0, &[]),                 // FWD
            ("t", info(8, 0, false), 1, &[]),                 // TYPEDEF
            ("", info(9, 0, false), 1, &[]),                  // VOLATILE
            ("", info(10, 0, false), 1, &[]),                 // CONST
            ("", info(11, 0, false), 1, &[]),                 // RESTRICT
            ("fn", info(12, 0, false), 13, &[]),              // FUNC
            ("", info(13, 1, false), 1, &[0, 1]),             // FUNC_PROTO
            ("v", info(14, 0, false), 1, &[1]),               // VAR
            (".data", info(15, 1, false), 4, &[12, 0, 4]),    // DATASEC
            ("fl", info(16, 0, false), 8, &[]),               // FLOAT
            ("tag", info(17, 0, false), 12, &[u32::MAX]),     // DECL_TAG
            ("tt", info(18, 0, false), 1, &[]),               // TYPE_TAG
            ("e64", info(19, 1, false), 8, &[1, 2, 3]),       // ENUM64
            ("u", info(KIND_UNION, 1, false), 4, &[1, 1, 0]), // UNION
            ("s", info(KIND_STRUCT, 2, false), 8, &[1, 1, 0, 5, 1, 32]), // STRUCT
        ]);
        // Member names reuse type names' strings: "int" at 1, "arr" at 5.
        assert_eq!(member_offset(&btf, "s", "int"), Some(0));
        assert_eq!(member_offset(&btf, "s", "arr"), Some(4));
        assert_eq!(
            member_offset(&btf, "u", "int"),
            None,
            "a union, not a struct"
        );
    }

    #[test]
    fn anonymous_members_that_fan_out_into_each_other_end_quickly() {
        // A union of 200 anonymous members, each the union itself: 200^8 paths without a bound.
        let members: Vec<u32> = (0..200).flat_map(|_| [0, 1, 0]).collect();
        let btf = blob(&[("s", info(KIND_STRUCT, 200, false), 4, &members)]);
        let started = std::time::Instant::now();
        assert_eq!(member_offset(&btf, "s", "pid"), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn members_of_type_void_or_past_the_last_type_are_skipped() {
        // task_struct { <anonymous> of type 0 (void); <anonymous> of type 9 (none); int pid; };
        // string offsets: "int" 1, "task_struct" 5, "pid" 17.
        let btf = blob(&[
            ("int", info(1, 0, false), 4, &[32]),
            (
                "task_struct",
                info(KIND_STRUCT, 3, false),
                8,
                &[0, 0, 0, 0, 9, 0, 17, 1, 32],
            ),
            ("pid", info(7, 0, false), 0, &[]),
        ]);
        assert_eq!(member_offset(&btf, "task_struct", "pid"), Some(4));
    }

    /// The running kernel's BTF, read by this scan and by btfparse (a full parser): the same
    /// offsets for plain members, members of anonymous unions and structs, and none for
    /// bitfields.
    #[test]
    fn agrees_with_a_full_parser_on_this_kernels_btf() {
        let bytes = std::fs::read(VMLINUX_BTF)
            .unwrap_or_else(|e| panic!("this test needs the kernel's BTF ({VMLINUX_BTF}): {e}"));
        let parsed = btfparse::TypeInformation::new(&InMemory(bytes.clone())).unwrap();
        let mut compared = 0;
        for (structure, member) in [
            ("task_struct", "pid"),
            ("task_struct", "tgid"),
            ("task_struct", "comm"),
            ("task_struct", "__state"),
            ("task_struct", "se"),
            ("task_struct", "mm"),
            ("task_struct", "rcu"),
            ("task_struct", "in_execve"),
            ("sk_buff", "len"),
            ("sk_buff", "dev"),
            ("sk_buff", "tstamp"),
            ("sk_buff", "pkt_type"),
            ("page", "flags"),
            ("page", "lru"),
            ("kvm_vcpu", "vcpu_id"),
            ("kvm_run", "exit_reason"),
            ("kvm_run", "io"),
        ] {
            let Some(id) = parsed.id_of(structure) else {
                continue;
            };
            let expected = match parsed.offset_of(id, member) {
                Ok((_, btfparse::Offset::ByteOffset(offset))) => Some(offset),
                Ok((_, btfparse::Offset::BitOffsetAndSize(..))) | Err(_) => None,
            };
            assert_eq!(
                member_offset(&bytes, structure, member),
                expected,
                "{structure}.{member}"
            );
            compared += usize::from(expected.is_some());
        }
        assert!(
            compared >= 8,
            "only {compared} members found in this kernel's BTF"
        );
        assert_eq!(
            task_pid_offset(Path::new(VMLINUX_BTF)),
            Some(member_offset(&bytes, "task_struct", "pid").unwrap())
        );
    }

    struct InMemory(Vec<u8>);

    impl btfparse::Readable for InMemory {
        fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            match start
                .checked_add(buffer.len())
                .and_then(|end| self.0.get(start..end))
            {
                Some(bytes) => {
                    buffer.copy_from_slice(bytes);
                    Ok(())
                }
                None => Err(btfparse::Error::new(
                    btfparse::ErrorKind::InvalidOffset,
                    "read past the end of the BTF",
                )),
            }
        }
    }
}
