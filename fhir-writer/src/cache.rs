//! A bounded concurrent cache with a time-to-live, for identities and Observations.

use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Cache settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries kept.
    pub capacity: usize,
    /// How long an entry stays valid after it was written.
    pub ttl: Duration,
}

/// A bounded TTL cache. When full, expired entries go first, then arbitrary ones.
#[derive(Debug)]
pub struct TtlCache<K: Eq + Hash, V> {
    map: DashMap<K, (Instant, V)>,
    config: CacheConfig,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        TtlCache {
            map: DashMap::new(),
            config,
        }
    }

    /// The value for `k`, if present and fresh.
    pub fn get(&self, k: &K) -> Option<V> {
        let hit = self.map.get(k).map(|e| (e.0, e.1.clone()));
        match hit {
            Some((at, v)) if at.elapsed() < self.config.ttl => Some(v),
            Some(_) => {
                self.map.remove(k);
                None
            }
            None => None,
        }
    }

    /// Stores `v` for `k`.
    pub fn insert(&self, k: K, v: V) {
        if self.config.capacity == 0 {
            return;
        }
        if self.map.len() >= self.config.capacity && !self.map.contains_key(&k) {
            let ttl = self.config.ttl;
            self.map.retain(|_, (at, _)| at.elapsed() < ttl);
            let over = (self.map.len() + 1).saturating_sub(self.config.capacity);
            if over > 0 {
                // Evict a tenth (at least what is needed) so eviction is rare.
                let n = over.max(self.config.capacity / 10);
                let victims: Vec<K> = self.map.iter().take(n).map(|e| e.key().clone()).collect();
                for v in victims {
                    self.map.remove(&v);
                }
            }
        }
        self.map.insert(k, (Instant::now(), v));
    }

    /// Forgets `k`.
    pub fn remove(&self, k: &K) {
        self.map.remove(k);
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

    #[test]
    fn bounded_and_expiring() {
        let c = TtlCache::new(CacheConfig {
            capacity: 10,
            ttl: Duration::from_millis(50),
        });
        for i in 0..100 {
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
}
