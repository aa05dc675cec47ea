//! The compact binary encoding of an [`Interval`]: LEB128 varints, and keys sent once (a
//! dictionary that grows as keys first appear) and then referred to by a small id. A typical
//! interval of 120 active keys encodes to a few hundred bytes before compression.

use std::hash::{BuildHasher, Hash};

use kvmtrace_common::{Counter, DetailKey, HIST_BUCKETS, LatencyKey, bucket_low, bucket_width};

use super::{
    FormatError,
    limits::{Budget, MAX_DETAIL_KEYS, MAX_LATENCY_KEYS},
};
use crate::model::{Interval, LatencyDelta, ThreadCpu};

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over an encoded payload; every read is bounds-checked.
pub struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Input { buf, pos: 0 }
    }

    pub fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(FormatError::Malformed("varint runs past the record"))?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FormatError::Malformed("varint longer than 64 bits"))
    }

    pub fn u32(&mut self) -> Result<u32, FormatError> {
        u32::try_from(self.varint()?)
            .map_err(|_| FormatError::Malformed("value does not fit 32 bits"))
    }

    /// A count of items that each take at least one byte: bounded by what is left, so a corrupt
    /// count cannot make the reader allocate without limit.
    pub fn count(&mut self) -> Result<usize, FormatError> {
        let n = self.varint()? as usize;
        if n > self.buf.len() - self.pos {
            return Err(FormatError::Malformed("item count larger than the record"));
        }
        Ok(n)
    }

    pub fn finished(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Encoder state: the keys already sent.
#[derive(Default)]
pub struct Encoder {
    /// Each key sent, its id its place (in the order keys came, which is the order the next
    /// interval's keys come in: looking them up walks memory from one end to the other).
    latency_ids: indexmap::IndexSet<LatencyKey, foldhash::fast::RandomState>,
    detail_ids: indexmap::IndexSet<DetailKey, foldhash::fast::RandomState>,
}

/// Decoder state: the file's format version and the keys received so far, by id.
pub struct Decoder {
    version: u32,
    latency_keys: Vec<LatencyKey>,
    detail_keys: Vec<DetailKey>,
}

impl Encoder {
    pub fn encode(&mut self, iv: &Interval) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + iv.latency.len() * 32 + iv.details.len() * 8);
        put_varint(&mut out, iv.at.as_nanos() as u64);
        // New keys first, so the entries below can refer to them; a key listed twice in one
        // interval is declared once (ids must stay the decoder's indexes).
        let (latency_ids, new_latency) =
            declare(&mut self.latency_ids, iv.latency.iter().map(|(k, _)| k));
        put_varint(&mut out, new_latency.len() as u64);
        for k in new_latency {
            for v in k.to_fields() {
                put_varint(&mut out, v as u64);
            }
        }
        let (detail_ids, new_detail) =
            declare(&mut self.detail_ids, iv.details.iter().map(|(k, _)| k));
        put_varint(&mut out, new_detail.len() as u64);
        for k in new_detail {
            for v in [k.tgid, k.tid, k.kind, k.a] {
                put_varint(&mut out, v as u64);
            }
            put_varint(&mut out, k.b);
        }
        put_varint(&mut out, iv.latency.len() as u64);
        for ((_, d), id) in iv.latency.iter().zip(latency_ids) {
            put_varint(&mut out, id);
            put_varint(&mut out, d.count);
            put_varint(&mut out, d.total_ns);
            put_varint(&mut out, d.min_ns);
            put_varint(&mut out, d.max_ns);
            put_varint(&mut out, d.buckets.len() as u64);
            let mut prev = 0u64;
            for &(idx, n) in &d.buckets {
                // The model's invariant: buckets in ascending order, each below HIST_BUCKETS.
                debug_assert!(u64::from(idx) >= prev && usize::from(idx) < HIST_BUCKETS);
                put_varint(&mut out, u64::from(idx).wrapping_sub(prev));
                put_varint(&mut out, n as u64);
                prev = idx as u64;
            }
        }
        put_varint(&mut out, iv.details.len() as u64);
        for ((_, n), id) in iv.details.iter().zip(detail_ids) {
            put_varint(&mut out, id);
            put_varint(&mut out, *n);
        }
        for c in iv.counters {
            put_varint(&mut out, c);
        }
        put_varint(&mut out, iv.threads.len() as u64);
        for t in &iv.threads {
            put_varint(&mut out, t.tgid as u64);
            put_varint(&mut out, t.tid as u64);
            for v in [
                t.tracked_ns,
                t.run_ns,
                t.off_run_blocked_ns,
                t.off_run_runnable_ns,
                t.off_user_blocked_ns,
                t.off_user_runnable_ns,
            ] {
                put_varint(&mut out, v);
            }
            // 0 = unknown, else value + 1.
            put_varint(&mut out, t.procfs_ns.map_or(0, |v| v.saturating_add(1)));
        }
        out
    }
}

/// The id of each key of `keys`, and the keys not sent yet, in order and each once, given their
/// ids (one dictionary lookup per key: with tens of thousands of keys per interval, a second
/// was a measurable part of the recorder's CPU).
fn declare<'k, K: Copy + Eq + Hash + 'k, S: BuildHasher>(
    ids: &mut indexmap::IndexSet<K, S>,
    keys: impl Iterator<Item = &'k K>,
) -> (Vec<u64>, Vec<K>) {
    let mut all = Vec::with_capacity(keys.size_hint().0);
    let mut new = Vec::new();
    for k in keys {
        let (id, inserted) = ids.insert_full(*k);
        if inserted {
            new.push(*k);
        }
        all.push(id as u64);
    }
    (all, new)
}

/// Room for `n` more keys in a dictionary of `have`, at most `max`: refused beyond, charged
/// to the budget otherwise.
fn grow_keys<T>(
    keys: &mut Vec<T>,
    n: usize,
    max: usize,
    what: &str,
    budget: &mut Budget,
) -> Result<(), FormatError> {
    if n > max - keys.len().min(max) {
        return Err(FormatError::TooLarge {
            what: format!(
                "more than {max} distinct {what} keys ({} declared so far, {n} more in one interval)",
                keys.len()
            ),
        });
    }
    // Vec growth may double the capacity: charge what it will really hold.
    let before = keys.capacity();
    let needed = keys.len() + n;
    if needed > before {
        let after = needed.max(before.saturating_mul(2));
        budget.charge(after - before, size_of::<T>())?;
        keys.reserve_exact(after - keys.len());
    }
    Ok(())
}

impl Decoder {
    /// A decoder for the INTERVAL records of a file of `version` (one that the reader accepts).
    pub fn new(version: u32) -> Decoder {
        Decoder {
            version,
            latency_keys: Vec::new(),
            detail_keys: Vec::new(),
        }
    }

    /// One interval record. Every list is charged to `budget` before it is allocated, and the
    /// key dictionaries are capped ([`MAX_LATENCY_KEYS`], [`MAX_DETAIL_KEYS`]).
    pub fn decode(&mut self, payload: &[u8], budget: &mut Budget) -> Result<Interval, FormatError> {
        let mut input = Input::new(payload);
        let mut iv = Interval {
            at: std::time::Duration::from_nanos(input.varint()?),
            ..Default::default()
        };
        let n = input.count()?;
        grow_keys(
            &mut self.latency_keys,
            n,
            MAX_LATENCY_KEYS,
            "latency",
            budget,
        )?;
        for _ in 0..n {
            let mut f = [0u32; 6];
            for v in &mut f {
                *v = input.u32()?;
            }
            self.latency_keys.push(LatencyKey::from_fields(f));
        }
        let n = input.count()?;
        grow_keys(&mut self.detail_keys, n, MAX_DETAIL_KEYS, "detail", budget)?;
        for _ in 0..n {
            let mut f = [0u32; 4];
            for v in &mut f {
                *v = input.u32()?;
            }
            let b = input.varint()?;
            self.detail_keys.push(DetailKey {
                tgid: f[0],
                tid: f[1],
                kind: f[2],
                a: f[3],
                b,
            });
        }
        let n = input.count()?;
        budget.charge(n, size_of::<(LatencyKey, LatencyDelta)>())?;
        iv.latency.reserve_exact(n);
        for _ in 0..n {
            let key = *self
                .latency_keys
                .get(input.varint()? as usize)
                .ok_or(FormatError::Malformed("unknown latency key id"))?;
            let mut d = LatencyDelta {
                count: input.varint()?,
                total_ns: input.varint()?,
                min_ns: input.varint()?,
                max_ns: input.varint()?,
                buckets: Vec::new(),
            };
            let mut idx = 0u64;
            let n = input.count()?;
            budget.charge(n, size_of::<(u16, u32)>())?;
            d.buckets.reserve_exact(n);
            for _ in 0..n {
                idx += input.varint()?;
                if idx >= HIST_BUCKETS as u64 {
                    return Err(FormatError::Malformed("histogram bucket out of range"));
                }
                d.buckets.push((idx as u16, input.u32()?));
            }
            iv.latency.push((key, d));
        }
        let n = input.count()?;
        budget.charge(n, size_of::<(DetailKey, u64)>())?;
        iv.details.reserve_exact(n);
        for _ in 0..n {
            let key = *self
                .detail_keys
                .get(input.varint()? as usize)
                .ok_or(FormatError::Malformed("unknown detail key id"))?;
            iv.details.push((key, input.varint()?));
        }
        for c in 0..Counter::COUNT as usize {
            iv.counters[c] = input.varint()?;
        }
        // Version 1 files written before per-thread CPU records existed end here; later ones
        // (and every file of version 2) go on with them (the version table: record/mod.rs).
        if self.version >= 2 || !input.finished() {
            decode_threads(&mut input, budget, &mut iv.threads)?;
        }
        if !input.finished() {
            return Err(FormatError::Malformed("trailing bytes after an interval"));
        }
        if self.version == 1 {
            for (_, d) in &mut iv.latency {
                clamp_to_buckets(d);
            }
        }
        Ok(iv)
    }
}

/// The per-thread CPU records of an interval.
fn decode_threads(
    input: &mut Input,
    budget: &mut Budget,
    threads: &mut Vec<ThreadCpu>,
) -> Result<(), FormatError> {
    let n = input.count()?;
    budget.charge(n, size_of::<ThreadCpu>())?;
    threads.reserve_exact(n);
    for _ in 0..n {
        let (tgid, tid) = (input.u32()?, input.u32()?);
        let mut f = [0u64; 6];
        for v in &mut f {
            *v = input.varint()?;
        }
        let procfs = input.varint()?;
        threads.push(ThreadCpu {
            tgid,
            tid,
            tracked_ns: f[0],
            run_ns: f[1],
            off_run_blocked_ns: f[2],
            off_run_runnable_ns: f[3],
            off_user_blocked_ns: f[4],
            off_user_runnable_ns: f[5],
            procfs_ns: procfs.checked_sub(1),
            procfs_tracked_ns: if procfs == 0 { 0 } else { f[0] },
        });
    }
    Ok(())
}

/// A version 1 key's minimum and maximum as those of its interval. Files written before 5beba80
/// hold them since attach; the interval's own lie in its lowest and highest bucket, so clamping
/// to those buckets gives them within a bucket's width (1/16 of the value), changes nothing where
/// they already were the interval's (the later version 1 files), and leaves a whole recording's
/// extremes exact (the interval that saw the extreme keeps it).
fn clamp_to_buckets(d: &mut LatencyDelta) {
    let (Some(&(lowest, _)), Some(&(highest, _))) = (d.buckets.first(), d.buckets.last()) else {
        return;
    };
    let (lowest, highest) = (usize::from(lowest), usize::from(highest));
    // The last bucket holds everything above its row.
    let high = if highest == HIST_BUCKETS - 1 {
        u64::MAX
    } else {
        bucket_low(highest) + bucket_width(highest) - 1
    };
    d.min_ns = d.min_ns.max(bucket_low(lowest));
    d.max_ns = d.max_ns.min(high);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::VERSION;

    fn interval(at: u64, n: u32) -> Interval {
        let mut counters = [0; Counter::COUNT as usize];
        counters[0] = at * 1000;
        Interval {
            at: Duration::from_secs(at),
            latency: (0..n)
                .map(|i| {
                    (
                        LatencyKey {
                            tgid: 100,
                            tid: 101 + i % 4,
                            vcpu_id: i % 4,
                            isa: 2,
                            reason: 0x60 + i,
                            kind: 0,
                        },
                        LatencyDelta {
                            count: 1000 + i as u64,
                            total_ns: 1 << 33,
                            min_ns: 300,
                            max_ns: 9_000_000,
                            buckets: vec![(100, 7), (101, 900), (300, 1)],
                        },
                    )
                })
                .collect(),
            details: (0..n)
                .map(|i| {
                    (
                        DetailKey {
                            tgid: 100,
                            tid: 101,
                            kind: 1,
                            a: 0x70 + i,
                            b: 1 | 1 << 8,
                        },
                        20_000 + i as u64,
                    )
                })
                .collect(),
            counters,
            threads: (0..n)
                .map(|i| ThreadCpu {
                    tgid: 100,
                    tid: 101 + i,
                    tracked_ns: at * 1_000_000_000,
                    run_ns: 7,
                    procfs_ns: (i % 2 == 0).then_some(i as u64),
                    procfs_tracked_ns: if i % 2 == 0 { at * 1_000_000_000 } else { 0 },
                    ..Default::default()
                })
                .collect(),
            stacks: Default::default(),
            slow: Default::default(),
            guest_rips: Default::default(),
        }
    }

    #[test]
    fn round_trips_with_a_growing_dictionary() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::new(VERSION);
        let mut budget = Budget::default();
        for (at, n) in [(1, 3), (2, 5), (3, 5), (4, 0)] {
            let iv = interval(at, n);
            let bytes = enc.encode(&iv);
            let back = dec.decode(&bytes, &mut budget).unwrap();
            assert_eq!(back.at, iv.at);
            assert_eq!(back.latency, iv.latency);
            assert_eq!(back.details, iv.details);
            assert_eq!(back.counters, iv.counters);
            assert_eq!(back.threads, iv.threads);
        }
        // Keys are sent once: the third interval (same keys as the second) is smaller.
        let mut enc = Encoder::default();
        let first = enc.encode(&interval(2, 5)).len();
        let again = enc.encode(&interval(3, 5)).len();
        assert!(again < first, "{again} < {first}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = Decoder::new(VERSION);
        for bad in [
            &[][..],
            &[0x80],
            &[
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            &[0, 0, 0, 1, 7, 1],
        ] {
            assert!(dec.decode(bad, &mut Budget::default()).is_err(), "{bad:?}");
        }
        let mut bytes = Encoder::default().encode(&interval(1, 2));
        bytes.push(0);
        assert!(
            Decoder::new(VERSION)
                .decode(&bytes, &mut Budget::default())
                .is_err(),
            "trailing byte"
        );
    }

    #[test]
    fn a_key_listed_twice_is_declared_once() {
        // Duplicates once desynchronized the dictionaries: the next new key got the id of the
        // duplicate on the decoder's side, and decoded as another key without an error.
        let mut iv = interval(1, 2);
        iv.latency.push(iv.latency[0].clone());
        iv.details.push(iv.details[1]);
        let mut enc = Encoder::default();
        let mut dec = Decoder::new(VERSION);
        let mut budget = Budget::default();
        let back = dec.decode(&enc.encode(&iv), &mut budget).unwrap();
        assert_eq!((back.latency, back.details), (iv.latency, iv.details));
        let next = interval(2, 4);
        let back = dec.decode(&enc.encode(&next), &mut budget).unwrap();
        assert_eq!((back.latency, back.details), (next.latency, next.details));
    }

    /// A payload of version 1 as bc949b8 wrote it: nothing after the counters.
    fn without_threads(iv: &Interval) -> Vec<u8> {
        let iv = Interval {
            threads: vec![],
            ..iv.clone()
        };
        let mut bytes = Encoder::default().encode(&iv);
        assert_eq!(bytes.pop(), Some(0), "the thread count");
        bytes
    }

    #[test]
    fn version_1_intervals_with_and_without_threads() {
        let mut iv = interval(1, 3);
        for (_, d) in &mut iv.latency {
            // Inside their buckets (100 and 300), so that version 1 does not clamp them.
            (d.min_ns, d.max_ns) = (650, 3_700_000);
        }
        let decode =
            |version, bytes: &[u8]| Decoder::new(version).decode(bytes, &mut Budget::default());
        let old = without_threads(&iv);
        let back = decode(1, &old).unwrap();
        assert!(back.threads.is_empty());
        assert_eq!(
            (back.latency, back.details, back.counters),
            (iv.latency.clone(), iv.details.clone(), iv.counters)
        );
        assert!(
            decode(2, &old).is_err(),
            "version 2 always has its thread records"
        );
        let back = decode(1, &Encoder::default().encode(&iv)).unwrap();
        assert_eq!(back.threads, iv.threads);
    }

    #[test]
    fn version_1_extremes_since_attach_are_clamped_to_the_buckets() {
        let mut iv = interval(1, 1);
        // Buckets 100 ..= 300: from 640 ..= 671 ns to 3 670 016 ..= 3 801 087 ns; interval()'s
        // min and max, 300 ns and 9 ms, are since attach.
        let d = &mut iv.latency[0].1;
        assert_eq!((d.min_ns, d.max_ns), (300, 9_000_000));
        assert_eq!(d.buckets, [(100, 7), (101, 900), (300, 1)]);
        let bytes = without_threads(&iv);
        let back = Decoder::new(1)
            .decode(&bytes, &mut Budget::default())
            .unwrap();
        let d = &back.latency[0].1;
        assert_eq!(
            (d.min_ns, d.max_ns),
            (bucket_low(100), bucket_low(300) + bucket_width(300) - 1)
        );
        assert_eq!((d.min_ns, d.max_ns), (640, 3_801_087));
        // Values inside the buckets stay; the last bucket has no upper end.
        let d = &mut iv.latency[0].1;
        (d.min_ns, d.max_ns) = (650, 1 << 40);
        d.buckets = vec![(100, 1), (HIST_BUCKETS as u16 - 1, 1)];
        let back = Decoder::new(1)
            .decode(&without_threads(&iv), &mut Budget::default())
            .unwrap();
        assert_eq!(
            (back.latency[0].1.min_ns, back.latency[0].1.max_ns),
            (650, 1 << 40)
        );
        // Version 2 holds the interval's own: nothing is clamped.
        let back = Decoder::new(2)
            .decode(&Encoder::default().encode(&iv), &mut Budget::default())
            .unwrap();
        assert_eq!(back.latency, iv.latency);
    }

    /// An interval that declares `n` new detail keys (each one varint per field) and nothing else.
    fn declaring_detail_keys(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, 1); // at
        put_varint(&mut out, 0); // no latency keys
        put_varint(&mut out, n as u64);
        for i in 0..n {
            for v in [1, 2, 1, i as u64, 0] {
                put_varint(&mut out, v);
            }
        }
        put_varint(&mut out, 0); // no latency entries
        put_varint(&mut out, 0); // no detail entries
        for _ in 0..Counter::COUNT {
            put_varint(&mut out, 0);
        }
        put_varint(&mut out, 0); // threads
        out
    }

    #[test]
    fn dictionaries_are_capped() {
        let mut dec = Decoder::new(VERSION);
        let mut budget = Budget::default();
        dec.decode(&declaring_detail_keys(MAX_DETAIL_KEYS), &mut budget)
            .unwrap();
        let err = dec
            .decode(&declaring_detail_keys(1), &mut budget)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the recording is over a limit of this reader (a damaged or hostile file): more than {MAX_DETAIL_KEYS} distinct detail keys ({MAX_DETAIL_KEYS} declared so far, 1 more in one interval)"
            )
        );
    }

    #[test]
    fn lists_are_charged_before_they_are_allocated() {
        // 300 000 detail entries of 2 bytes each decode to 32 bytes each: over a 4 MiB budget.
        let mut budget = Budget::default();
        budget
            .charge(1, crate::record::limits::MEMORY_FLOOR - (4 << 20))
            .unwrap();
        let mut out = Vec::new();
        put_varint(&mut out, 1);
        put_varint(&mut out, 0);
        put_varint(&mut out, 0);
        put_varint(&mut out, 0);
        put_varint(&mut out, 300_000);
        out.extend(std::iter::repeat_n(0u8, 600_000));
        let err = Decoder::new(VERSION).decode(&out, &mut budget).unwrap_err();
        assert!(matches!(err, FormatError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn varints() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Input::new(&out).varint().unwrap(), v);
        }
    }
}
