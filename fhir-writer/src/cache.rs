//! A bounded concurrent cache with a time-to-live, for identities and Observations, capped by
//! entries and by the bytes its values hold.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Cache settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries kept.
    pub capacity: usize,
    /// How long an entry stays valid after it was written.
    pub ttl: Duration,
    /// Most bytes the values may hold, by their `Weight` (`usize::MAX`: no byte cap).
    pub max_bytes: usize,
}

/// The memory a cached value holds, roughly (what dominates it: an Observation's SampledData
/// `data` string, for instance).
pub trait Weight {
    /// Bytes.
    fn weight(&self) -> usize;
}

/// A bounded TTL cache. When full (entries or bytes), expired entries go first, then arbitrary
/// ones.
#[derive(Debug)]
pub struct TtlCache<K: Eq + Hash, V> {
    map: DashMap<K, (Instant, usize, V)>,
    bytes: AtomicUsize,
    config: CacheConfig,
}

impl<K: Eq + Hash + Clone, V: Clone + Weight> TtlCache<K, V> {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        TtlCache {
            map: DashMap::new(),
            bytes: AtomicUsize::new(0),
            config,
        }
    }

    /// Bytes the values hold now, by their `Weight`.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn take_out(&self, k: &K) {
        if let Some((_, (_, w, _))) = self.map.remove(k) {
            self.bytes.fetch_sub(w, Ordering::Relaxed);
        }
    }

    /// The value for `k`, if present and fresh.
    pub fn get(&self, k: &K) -> Option<V> {
        let hit = self.map.get(k).map(|e| (e.0, e.2.clone()));
        match hit {
            Some((at, v)) if at.elapsed() < self.config.ttl => Some(v),
            Some(_) => {
                self.take_out(k);
                None
            }
            None => None,
        }
    }

    /// Stores `v` for `k`. A value heavier than the whole byte cap is not kept.
    pub fn insert(&self, k: K, v: V) {
        let w = v.weight();
        if self.config.capacity == 0 || w > self.config.max_bytes {
            self.take_out(&k);
            return;
        }
        self.take_out(&k);
        let full = self.map.len() >= self.config.capacity;
        let heavy = self.bytes().saturating_add(w) > self.config.max_bytes;
        if full || heavy {
            let ttl = self.config.ttl;
            let mut freed = 0;
            self.map.retain(|_, (at, weight, _)| {
                let keep = at.elapsed() < ttl;
                if !keep {
                    freed += *weight;
                }
                keep
            });
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            // Then arbitrary entries, a tenth at least (so eviction is rare), until both caps
            // leave room for this one.
            let mut evict = self.config.capacity / 10;
            while !self.map.is_empty()
                && (evict > 0
                    || self.map.len() >= self.config.capacity
                    || self.bytes().saturating_add(w) > self.config.max_bytes)
            {
                let victims: Vec<K> = self
                    .map
                    .iter()
                    .take(evict.max(1))
                    .map(|e| e.key().clone())
                    .collect();
                for v in &victims {
                    self.take_out(v);
                }
                evict = 0;
            }
        }
        self.bytes.fetch_add(w, Ordering::Relaxed);
        self.map.insert(k, (Instant::now(), w, v));
    }

    /// Forgets `k`.
    pub fn remove(&self, k: &K) {
        self.take_out(k);
    }

    /// Number of entries (fresh or not).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weight for u64 {
        fn weight(&self) -> usize {
            *self as usize
        }
    }

    #[test]
    fn bounded_and_expiring() {
        let c = TtlCache::new(CacheConfig {
            capacity: 10,
            ttl: Duration::from_millis(50),
            max_bytes: usize::MAX,
        });
        for i in 0..100u64 {
            c.insert(i, i * 2);
            assert!(c.len() <= 10);
        }
        assert_eq!(c.get(&99), Some(198));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&99), None);
        c.insert(1, 1);
        c.remove(&1);
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn bounded_by_bytes() {
        // Values weigh their own number of bytes.
        let c: TtlCache<u64, u64> = TtlCache::new(CacheConfig {
            capacity: 1000,
            ttl: Duration::from_secs(60),
            max_bytes: 1000,
        });
        for i in 0..200u64 {
            c.insert(i, 90);
            assert!(c.bytes() <= 1000, "{} bytes after {i}", c.bytes());
            assert_eq!(c.bytes(), 90 * c.len());
        }
        assert_eq!(c.get(&199), Some(90), "the newest is kept");
        // Replacing a value counts its new weight only; too heavy a value is not kept.
        c.insert(199, 10);
        assert_eq!(c.bytes(), 90 * (c.len() - 1) + 10);
        c.insert(7, 5000);
        assert_eq!(c.get(&7), None);
        c.remove(&199);
        assert_eq!(c.bytes(), 90 * c.len());
    }
}
