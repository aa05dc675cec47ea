//! The keyed pools (kvmtrace_common::Pool) as the collector sees them: the value arrays of both
//! epoch parities and the key array are mapped into this process, so draining an epoch reads
//! and zeroes the used part of one array in place (no syscall, no copy per key). The collector
//! gives back the index of a key that was idle for [`IDLE_DRAINS`] epochs (one while the pool is
//! over half full): out of INDEX at once, on the free stack one drain later (after that drain's
//! epoch switch has waited out every program that could still have found the index).

use std::{hash::Hash, os::fd::AsFd as _, os::fd::AsRawFd as _, ptr::NonNull};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, Stack},
};
use kvmtrace_common::{HIST_BUCKETS, HIST_ROW, LatencyStats, Pool, maps};

use super::kernel::{BPF_NOEXIST, map_mut, map_ref};
use crate::error::Error;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// A BPF array created BPF_F_MMAPABLE, mapped into this process.
pub(super) struct Mapped<T> {
    base: NonNull<T>,
    /// Elements (the map's max_entries).
    len: u32,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value.
unsafe impl<T> Send for Mapped<T> {}

impl<T: Copy> Mapped<T> {
    /// Maps array `name`, whose elements must be T (T's size a multiple of 8, as the kernel
    /// rounds an array's element size).
    pub(super) fn open(ebpf: &Ebpf, name: &str) -> Result<Self, Error> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            return Err(Error::bpf(
                name,
                std::io::Error::other("array not in object"),
            ));
        };
        let len = data
            .info()
            .map_err(|e| Error::bpf(format!("map {name}"), e))?
            .max_entries();
        let bytes = (len as usize * size_of::<T>()).next_multiple_of(page_size());
        // SAFETY: a shared mapping of the map's memory (created BPF_F_MMAPABLE, its elements
        // T-sized), at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::bpf(
                format!("mapping {name}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Mapped {
            base: NonNull::new(base.cast()).expect("mmap returned a null mapping"),
            len,
            bytes,
        })
    }

    pub(super) fn len(&self) -> u32 {
        self.len
    }

    /// Element `i` (< len).
    pub(super) fn ptr(&self, i: u32) -> *mut T {
        assert!(
            i < self.len,
            "index {i} out of a mapped array of {}",
            self.len
        );
        // SAFETY: within the mapping.
        unsafe { self.base.as_ptr().add(i as usize) }
    }

    /// A copy of element `i`, which a program may be changing (each field is as current as a
    /// map lookup's copy would be).
    pub(super) fn get(&self, i: u32) -> Option<T> {
        // SAFETY: within the mapping; T is plain old data.
        (i < self.len).then(|| unsafe { self.ptr(i).read_volatile() })
    }

    pub(super) fn set(&self, i: u32, value: &T) {
        // SAFETY: within the mapping; T is plain old data.
        unsafe { self.ptr(i).write_volatile(*value) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// A pool's value: what an epoch holds at one index.
pub(super) trait PoolValue: Copy {
    /// Whether the epoch put anything here.
    fn active(&self) -> bool;
    /// Adds another index's value for the same key.
    fn merge(&mut self, other: &Self);
    /// Back to empty, for a later epoch of the same parity.
    fn clear(&mut self);
}

impl PoolValue for u64 {
    fn active(&self) -> bool {
        *self != 0
    }
    fn merge(&mut self, other: &Self) {
        *self += other;
    }
    fn clear(&mut self) {
        *self = 0;
    }
}

/// The bucket ranges of the rows set in a LatencyStats' `rows`.
pub(super) fn used_rows(rows: u64) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..64usize)
        .filter(move |r| rows & (1 << r) != 0)
        .map(|r| r * HIST_ROW..((r + 1) * HIST_ROW).min(HIST_BUCKETS))
}

impl PoolValue for LatencyStats {
    fn active(&self) -> bool {
        self.count != 0
    }
    fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        self.min_ns = if self.count == 0 {
            other.min_ns
        } else {
            self.min_ns.min(other.min_ns)
        };
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        for rows in used_rows(other.rows) {
            for b in rows {
                self.buckets[b] = self.buckets[b].wrapping_add(other.buckets[b]);
            }
        }
        self.rows |= other.rows;
    }
    fn clear(&mut self) {
        for rows in used_rows(self.rows) {
            self.buckets[rows].fill(0);
        }
        // Field by field: the buckets are 2 KiB, mostly zero already.
        self.count = 0;
        self.total_ns = 0;
        self.min_ns = 0;
        self.max_ns = 0;
        self.rows = 0;
    }
}

/// Drains in a row a key may be idle and keep its index while the pool is at most half full.
/// A key counted about once an interval (a port each vCPU touches once a second) misses some
/// intervals: given back after one, such keys were retired and claimed again all the time (with
/// 10 000 of them, 20-1 900 INDEX removals per drain, and as many claims on the events' path).
pub(super) const IDLE_DRAINS: u8 = 8;

/// Drains a key may be idle before its index is given back, with `held` of the pool's `len`
/// indexes in use: [`IDLE_DRAINS`], or one once the pool is over half full (a guest touching
/// ever new addresses must not run it out of room).
pub(super) fn idle_drains_allowed(held: usize, len: usize) -> u8 {
    if held * 2 > len { 1 } else { IDLE_DRAINS }
}

/// The map names of one pool.
pub(super) struct PoolMaps {
    pub pool: Pool,
    pub index: &'static str,
    pub keys: &'static str,
    pub values: [&'static str; 2],
    pub free: &'static str,
}

pub(super) const LATENCY: PoolMaps = PoolMaps {
    pool: Pool::Latency,
    index: maps::LATENCY_INDEX,
    keys: maps::LATENCY_KEYS,
    values: maps::LATENCY,
    free: maps::LATENCY_FREE,
};

pub(super) const DETAILS: PoolMaps = PoolMaps {
    pool: Pool::Details,
    index: maps::DETAIL_INDEX,
    keys: maps::DETAIL_KEYS,
    values: maps::DETAILS,
    free: maps::DETAIL_FREE,
};

/// One pool, mapped.
pub(super) struct KeyPool<K, V> {
    maps: &'static PoolMaps,
    keys: Mapped<K>,
    values: [Mapped<V>; 2],
    /// The key of each index seen in use in a closed epoch, read from KEYS then (its program
    /// wrote it before taking the index, and had finished by the epoch's close).
    known: Vec<Option<K>>,
    /// How many of `known` are Some.
    held: usize,
    /// Drains in a row each known index was idle.
    idle_for: Vec<u8>,
    /// Indexes taken out of INDEX at the last drain, with their keys: the open epoch may still
    /// count into them, so they are read once more at the next drain, then freed.
    retiring: Vec<(u32, K)>,
    /// Indexes in use that the last [`KeyPool::take`] found idle long enough (or all of them,
    /// once counting is over): what [`KeyPool::retire`] gives back.
    idle: Vec<u32>,
    /// What the open epoch held for keys of threads that are gone, taken when their indexes
    /// were freed: the next [`KeyPool::take`] reports it with its epoch.
    carried: Vec<(K, V)>,
}

/// A pool key's thread (tgid, tid): its keys go as soon as it is gone.
pub(super) trait ThreadKey {
    fn thread(&self) -> (u32, u32);
}

impl ThreadKey for kvmtrace_common::LatencyKey {
    fn thread(&self) -> (u32, u32) {
        (self.tgid, self.tid)
    }
}

impl ThreadKey for kvmtrace_common::DetailKey {
    fn thread(&self) -> (u32, u32) {
        (self.tgid, self.tid)
    }
}

impl<K, V> KeyPool<K, V>
where
    K: aya::Pod + Hash + Eq + ThreadKey,
    V: PoolValue,
{
    /// Maps the pool's arrays and puts every index on its free stack, 0 on top (the stack hands
    /// out low indexes first, so the used part stays small).
    pub(super) fn open(ebpf: &mut Ebpf, maps: &'static PoolMaps) -> Result<Self, Error> {
        let keys = Mapped::open(ebpf, maps.keys)?;
        let values = [
            Mapped::open(ebpf, maps.values[0])?,
            Mapped::open(ebpf, maps.values[1])?,
        ];
        let len = keys.len();
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, maps.free)?;
        for i in (0..len).rev() {
            free.push(i, 0)
                .map_err(|e| Error::bpf(format!("filling {}", maps.free), e))?;
        }
        Ok(KeyPool {
            maps,
            keys,
            values,
            known: vec![None; len as usize],
            held: 0,
            idle_for: vec![0; len as usize],
            retiring: Vec::new(),
            idle: Vec::new(),
            carried: Vec::new(),
        })
    }

    /// Calls `each` once per key with what epoch `parity` (closed, its programs done) counted,
    /// and zeroes it; notes the keys idle long enough (see [`idle_drains_allowed`]; all of them
    /// with `retire_all`: counting is over) for [`KeyPool::retire`].
    pub(super) fn take(
        &mut self,
        ebpf: &mut Ebpf,
        parity: u32,
        retire_all: bool,
        mut each: impl FnMut(K, &V),
    ) -> Result<(), Error> {
        let values = &self.values[(parity & 1) as usize];
        let high = pool_high(ebpf, self.maps.pool)?.min(values.len());
        // A retired key may have a new index already: both are summed into one.
        let mut retired: foldhash::HashMap<K, V> = Default::default();
        for (key, v) in self.carried.drain(..) {
            retired
                .entry(key)
                .and_modify(|sum| sum.merge(&v))
                .or_insert(v);
        }
        for &(i, key) in &self.retiring {
            // SAFETY: a closed epoch's element: no program writes it any more.
            let v = unsafe { &mut *values.ptr(i) };
            if v.active() {
                retired
                    .entry(key)
                    .and_modify(|sum| sum.merge(v))
                    .or_insert(*v);
                v.clear();
            }
        }
        let idle = &mut self.idle;
        idle.clear();
        let allowed = if retire_all {
            0
        } else {
            idle_drains_allowed(self.held, self.known.len())
        };
        for i in 0..high {
            // SAFETY: as above.
            let v = unsafe { &mut *values.ptr(i) };
            let known = &mut self.known[i as usize];
            let idle_for = &mut self.idle_for[i as usize];
            if !v.active() {
                if known.is_some() {
                    *idle_for = idle_for.saturating_add(1);
                    if *idle_for >= allowed {
                        idle.push(i);
                    }
                }
                continue;
            }
            *idle_for = 0;
            let key = match known {
                Some(k) => *k,
                None => {
                    self.held += 1;
                    *known.insert(self.keys.get(i).expect("index within KEYS"))
                }
            };
            // (Most drains retire nothing: no hashing then.)
            match (!retired.is_empty())
                .then(|| retired.remove(&key))
                .flatten()
            {
                Some(mut sum) => {
                    sum.merge(v);
                    each(key, &sum);
                }
                None => each(key, v),
            }
            v.clear();
            if retire_all {
                idle.push(i);
            }
        }
        for (key, v) in retired {
            each(key, &v);
        }
        Ok(())
    }

    /// Frees the indexes retired at the last drain (the epoch switch since has waited out every
    /// program that could have found them) and retires the keys [`KeyPool::take`] found idle:
    /// out of INDEX now, freed at the next call. The keys of the threads `gone` go at once: with
    /// their thread gone nothing writes them any more, so what the open epoch (`open_parity`)
    /// holds for them is carried to the next drain and their indexes are free now. (A tid
    /// reused in the same process within an interval would be the exception, as for the
    /// threads' slots.)
    pub(super) fn retire(
        &mut self,
        ebpf: &mut Ebpf,
        gone: &std::collections::HashSet<(u32, u32)>,
        open_parity: u32,
    ) -> Result<(), Error> {
        let mut freed: Vec<u32> = self.retiring.drain(..).map(|(i, _)| i).collect();
        let mut index: BpfHashMap<&mut MapData, K, u32> = map_mut(ebpf, self.maps.index)?;
        if !gone.is_empty() {
            let open = &self.values[(open_parity & 1) as usize];
            for (i, known) in (0..).zip(self.known.iter_mut()) {
                let Some(key) = known.filter(|k| gone.contains(&k.thread())) else {
                    continue;
                };
                *known = None;
                self.held -= 1;
                // Only an index no longer in INDEX may be handed out again.
                if index.remove(&key).is_ok() {
                    // SAFETY: an element nothing writes any more (its thread is gone).
                    let v = unsafe { &mut *open.ptr(i) };
                    if v.active() {
                        self.carried.push((key, *v));
                        v.clear();
                    }
                    freed.push(i);
                }
            }
        }
        for i in std::mem::take(&mut self.idle) {
            let Some(key) = self.known[i as usize].take() else {
                continue;
            };
            self.held -= 1;
            if index.remove(&key).is_ok() {
                self.retiring.push((i, key));
            }
        }
        let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, self.maps.free)?;
        for i in freed {
            free.push(i, 0)
                .map_err(|e| Error::bpf(format!("returning an index to {}", self.maps.free), e))?;
        }
        Ok(())
    }

    /// How many keys the pool holds now (INDEX's entries).
    pub(super) fn keys_held(&self, ebpf: &Ebpf) -> Result<u64, Error> {
        let index: BpfHashMap<&MapData, K, u32> = map_ref(ebpf, self.maps.index)?;
        Ok(index.keys().count() as u64)
    }

    /// Counts `value` under `key` in the open epoch `parity` as a program would (taking an
    /// index for a new key): for the drain benchmark.
    pub(super) fn put(
        &mut self,
        ebpf: &mut Ebpf,
        parity: u32,
        key: K,
        value: V,
    ) -> Result<(), Error> {
        let index: BpfHashMap<&MapData, K, u32> = map_ref(ebpf, self.maps.index)?;
        let i = match index.get(&key, 0) {
            Ok(i) => i,
            Err(_) => {
                let mut free: Stack<&mut MapData, u32> = map_mut(ebpf, self.maps.free)?;
                let i = free.pop(0).map_err(|e| {
                    Error::bpf(format!("taking an index from {}", self.maps.free), e)
                })?;
                self.keys.set(i, &key);
                let mut index: BpfHashMap<&mut MapData, K, u32> = map_mut(ebpf, self.maps.index)?;
                index
                    .insert(key, i, BPF_NOEXIST)
                    .map_err(|e| Error::bpf(format!("filling {}", self.maps.index), e))?;
                raise_pool_high(ebpf, self.maps.pool, i + 1)?;
                i
            }
        };
        // SAFETY: within the mapping; the benchmark's keys have no programs writing them.
        unsafe {
            self.values[(parity & 1) as usize]
                .ptr(i)
                .write_volatile(value)
        };
        Ok(())
    }
}

/// One more than the highest index of `pool` any CPU has taken.
fn pool_high(ebpf: &Ebpf, pool: Pool) -> Result<u32, Error> {
    let high: PerCpuArray<&MapData, u32> = map_ref(ebpf, maps::POOL_HIGH)?;
    Ok(high
        .get(&(pool as u32), 0)
        .map_err(|e| Error::bpf("reading POOL_HIGH", e))?
        .iter()
        .copied()
        .max()
        .unwrap_or(0))
}

fn raise_pool_high(ebpf: &mut Ebpf, pool: Pool, to: u32) -> Result<(), Error> {
    let now = pool_high(ebpf, pool)?;
    if now >= to {
        return Ok(());
    }
    let mut high: PerCpuArray<&mut MapData, u32> = map_mut(ebpf, maps::POOL_HIGH)?;
    let ncpus = aya::util::nr_cpus().map_err(|(what, e)| Error::Io {
        what: what.into(),
        source: e,
    })?;
    let values = PerCpuValues::try_from(vec![to; ncpus]).map_err(|e| Error::Io {
        what: "per-CPU POOL_HIGH".into(),
        source: e,
    })?;
    high.set(pool as u32, values, 0)
        .map_err(|e| Error::bpf("setting POOL_HIGH", e))
}

#[cfg(test)]
mod tests {
    use kvmtrace_common::bucket_index;

    use super::*;

    fn stats(samples: &[u64]) -> LatencyStats {
        let mut s = LatencyStats::EMPTY;
        for &ns in samples {
            s.add(ns, bucket_index(ns));
        }
        s
    }

    #[test]
    fn a_retired_index_and_its_successor_sum_into_one_key() {
        let mut old = stats(&[300, 5_000]);
        old.merge(&stats(&[40, 5_000, 9_000_000]));
        assert_eq!(old, stats(&[300, 5_000, 40, 5_000, 9_000_000]));
        // An empty side changes nothing, whichever it is.
        let mut empty = LatencyStats::EMPTY;
        empty.merge(&old);
        assert_eq!(empty, old);
        old.merge(&LatencyStats::EMPTY);
        assert_eq!(empty, old);
    }

    #[test]
    fn clearing_zeroes_the_marked_rows_and_the_header() {
        let mut s = stats(&[3, 700, 700, 1 << 40]);
        assert_eq!(s.rows.count_ones(), 3);
        assert_eq!((s.count, s.min_ns, s.max_ns), (4, 3, 1 << 40));
        s.clear();
        assert_eq!(s, LatencyStats::EMPTY);
        assert!(!s.active());
        let mut n = 7u64;
        assert!(n.active());
        n.merge(&5);
        n.clear();
        assert_eq!(n, 0);
    }

    #[test]
    fn idle_keys_keep_their_index_until_the_pool_is_half_full() {
        assert_eq!(idle_drains_allowed(0, 8192), IDLE_DRAINS);
        assert_eq!(idle_drains_allowed(4096, 8192), IDLE_DRAINS);
        assert_eq!(idle_drains_allowed(4097, 8192), 1);
        assert_eq!(idle_drains_allowed(8192, 8192), 1);
    }

    #[test]
    fn used_rows_cover_exactly_the_marked_rows() {
        let rows: Vec<_> = used_rows(1 | 1 << 5 | 1 << 32).collect();
        assert_eq!(
            rows,
            vec![
                0..HIST_ROW,
                5 * HIST_ROW..6 * HIST_ROW,
                32 * HIST_ROW..HIST_BUCKETS
            ]
        );
    }
}
