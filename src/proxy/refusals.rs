//! Repeated 407s from one address are answered more and more slowly, so
//! guessing `[[client]]` passwords through the proxy is slow. The first
//! few misses are free (a client's first request often carries no
//! credentials); then each miss within a minute doubles the delay, up to
//! a few seconds. Memory is bounded: at most [`MAX_TRACKED`] addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Misses within [`WINDOW`] answered without delay.
const FREE: u32 = 3;
/// The delay of the first slowed miss; it doubles with each further one.
const BASE: Duration = Duration::from_millis(100);
/// The longest delay.
const MAX: Duration = Duration::from_secs(5);
/// A miss older than this is forgotten.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once.
const MAX_TRACKED: usize = 4096;

/// Recent 407s by client address.
#[derive(Default)]
pub(crate) struct Refusals {
    by_addr: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Refusals {
    /// Counts a 407 to `ip`; returns how long to wait before answering it.
    pub fn record(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| now.duration_since(*last) < WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let (misses, last) = map.entry(ip).or_insert((0, now));
        if now.duration_since(*last) >= WINDOW {
            *misses = 0;
        }
        *misses = misses.saturating_add(1);
        *last = now;
        match misses.checked_sub(FREE + 1) {
            None => Duration::ZERO,
            Some(n) => BASE.saturating_mul(1 << n.min(16)).min(MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_after_the_free_ones_wait_longer_and_longer() {
        let r = Refusals::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let delays: Vec<Duration> = (0..10).map(|_| r.record(ip)).collect();
        assert_eq!(&delays[..3], &[Duration::ZERO; 3]);
        assert_eq!(delays[3], BASE);
        assert_eq!(delays[4], BASE * 2);
        assert_eq!(delays[8], BASE * 32);
        assert_eq!(delays[9], MAX);
        // Another address is not slowed by this one.
        assert_eq!(r.record("10.0.0.2".parse().unwrap()), Duration::ZERO);
    }
}
