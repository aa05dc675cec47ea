//! Which detail keys (ports, MMIO addresses, MSRs, CPUID functions) get a series of their own:
//! at most K per VM (per vCPU with `--per-vcpu`) and kind, the busiest by a decaying rate, so a
//! guest touching thousands of addresses costs K + 1 series. The events of every other key count
//! in the kind's "other" series: the series of a kind add up to the exact total. A newcomer more
//! than twice as busy as the quietest key takes its place; that key's series is removed, and its
//! events of that interval go to "other", so no event is counted twice or lost.

use std::collections::BTreeMap;

pub struct TopK<K> {
    k: usize,
    /// Keys with a series and their decaying rate (events per interval, halved each interval).
    slots: BTreeMap<K, f64>,
}

/// Where one interval's events go.
#[derive(Debug, PartialEq)]
pub struct Assignment<K> {
    /// Events of keys with a series.
    pub keyed: Vec<(K, u64)>,
    /// Events of every other key.
    pub other: u64,
    /// Keys that lost their series.
    pub evicted: Vec<K>,
}

impl<K: Ord + Clone> TopK<K> {
    pub fn new(k: usize) -> TopK<K> {
        TopK {
            k: k.max(1),
            slots: BTreeMap::new(),
        }
    }

    /// Routes one interval's events per key (call it every interval, also with none, so rates
    /// decay).
    pub fn assign(&mut self, counts: &BTreeMap<K, u64>) -> Assignment<K> {
        for (key, rate) in &mut self.slots {
            *rate = (*rate + counts.get(key).copied().unwrap_or(0) as f64) / 2.0;
        }
        let mut newcomers: Vec<(&K, u64)> = counts
            .iter()
            .filter(|(k, n)| **n > 0 && !self.slots.contains_key(k))
            .map(|(k, n)| (k, *n))
            .collect();
        newcomers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut evicted = Vec::new();
        for (key, n) in newcomers {
            if self.slots.len() >= self.k {
                let Some((quietest, rate)) = self
                    .slots
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
                    .map(|(k, r)| (k.clone(), *r))
                else {
                    break;
                };
                if n as f64 <= 2.0 * rate {
                    break; // newcomers are sorted: no later one is busier
                }
                self.slots.remove(&quietest);
                evicted.push(quietest);
            }
            self.slots.insert(key.clone(), n as f64);
        }
        let mut keyed = Vec::new();
        let mut other = 0;
        for (key, &n) in counts {
            if self.slots.contains_key(key) {
                keyed.push((key.clone(), n));
            } else {
                other += n;
            }
        }
        Assignment {
            keyed,
            other,
            evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(u32, u64)]) -> BTreeMap<u32, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn the_first_k_keys_get_series_and_the_rest_is_other() {
        let mut t = TopK::new(2);
        let a = t.assign(&counts(&[(1, 10), (2, 30), (3, 20)]));
        assert_eq!(
            a,
            Assignment {
                keyed: vec![(2, 30), (3, 20)],
                other: 10,
                evicted: vec![]
            }
        );
        // Key 1 is not twice as busy as the quietest (3: (20 + 15) / 2 = 17.5): still other.
        let a = t.assign(&counts(&[(1, 30), (2, 30), (3, 15)]));
        assert_eq!((a.keyed, a.other), (vec![(2, 30), (3, 15)], 30));
    }

    #[test]
    fn a_busier_newcomer_takes_the_quietest_slot_and_nothing_is_counted_twice() {
        let mut t = TopK::new(2);
        t.assign(&counts(&[(1, 100), (2, 100)]));
        // Key 2 goes quiet, key 3 storms: 3 takes 2's slot; 2's last events go to other.
        let a = t.assign(&counts(&[(1, 100), (2, 5), (3, 1000)]));
        assert_eq!(
            a,
            Assignment {
                keyed: vec![(1, 100), (3, 1000)],
                other: 5,
                evicted: vec![2]
            }
        );
        let total: u64 = a.keyed.iter().map(|(_, n)| n).sum::<u64>() + a.other;
        assert_eq!(total, 1105);
    }

    #[test]
    fn idle_slots_decay_and_are_given_up() {
        let mut t = TopK::new(1);
        t.assign(&counts(&[(1, 1000)]));
        for _ in 0..10 {
            t.assign(&BTreeMap::new());
        }
        // 1000 / 2^10 < 1: a newcomer with 2 events/interval takes the slot.
        let a = t.assign(&counts(&[(2, 2)]));
        assert_eq!((a.keyed, a.evicted), (vec![(2, 2)], vec![1]));
    }
}
