//! Rate limits: token buckets per connection, and keyed buckets for login
//! attempts per user name and per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// [`Bucket::take`] at a time the caller has already read.
    pub fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Seconds until a token is available.
    pub fn wait_secs(&self) -> u64 {
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            0
        } else {
            ((1.0 - self.tokens) / self.rate).ceil() as u64
        }
    }
}

/// Buckets by key (a user name or an address), forgotten once full again.
pub struct Keyed<K> {
    rate: f64,
    burst: f64,
    // std Mutex: lookups and arithmetic only, never held across an await.
    buckets: Mutex<HashMap<K, Bucket>>,
}

/// Most keys remembered before full buckets are swept.
const SWEEP_AT: usize = 10_000;

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    /// `per_minute` attempts a minute, with that many in a burst.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            rate: f64::from(per_minute) / 60.0,
            burst: f64::from(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `per_hour` attempts an hour, with that many in a burst.
    pub fn per_hour(per_hour: u32) -> Self {
        Self {
            rate: f64::from(per_hour) / 3600.0,
            burst: f64::from(per_hour),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; `Err(seconds to wait)` when there is none.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        let mut map = self.buckets.lock().expect("limiter lock");
        if map.len() >= SWEEP_AT {
            let now = Instant::now();
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| {
                let refilled =
                    b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate;
                refilled < burst
            });
        }
        let bucket = map
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(self.rate, self.burst));
        if bucket.take() {
            Ok(())
        } else {
            Err(bucket.wait_secs().max(1))
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    /// Gives back the token a successful attempt took, so that only failed
    /// or abandoned attempts use up the budget.
    pub fn refund(&self, key: &K) {
        let mut map = self.buckets.lock().expect("limiter lock");
        if let Some(b) = map.get_mut(key) {
            b.tokens = (b.tokens + 1.0).min(b.burst);
        }
    }
}

/// Open connections per address.
#[derive(Default)]
pub struct PerAddress {
    // std Mutex: a counter update, never held across an await.
    counts: Mutex<HashMap<IpAddr, u32>>,
}

impl PerAddress {
    /// Counts a connection from `ip` unless it already has `max`.
    pub fn try_add(&self, ip: IpAddr, max: u32) -> bool {
        let mut m = self.counts.lock().expect("per-address lock");
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets one connection from `ip`.
    pub fn remove(&self, ip: IpAddr) {
        let mut m = self.counts.lock().expect("per-address lock");
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Default time a connection may stay without logging in.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = Bucket::new(10.0, 2.0);
        b.last = start;
        assert!(b.take_at(start));
        assert!(b.take_at(start));
        assert!(!b.take_at(start));
        assert!(b.take_at(start + Duration::from_millis(110)));
        assert!(!b.take_at(start + Duration::from_millis(120)));
    }

    #[test]
    fn keyed_limits_each_key_apart() {
        let k = Keyed::per_minute(2);
        assert!(k.take(&"a").is_ok());
        assert!(k.take(&"a").is_ok());
        assert!(k.take(&"a").is_err());
        assert!(k.take(&"b").is_ok());
    }

    #[test]
    fn refunds_keep_successes_free() {
        let k = Keyed::per_minute(1);
        for _ in 0..5 {
            assert!(k.take(&"a").is_ok());
            k.refund(&"a");
        }
        assert!(k.take(&"a").is_ok());
        assert!(k.take(&"a").is_err());
    }

    #[test]
    fn per_address_caps_and_releases() {
        let p = PerAddress::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.try_add(ip, 1));
        assert!(!p.try_add(ip, 1));
        p.remove(ip);
        assert!(p.try_add(ip, 1));
    }
}
