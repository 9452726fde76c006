//! The retry policy: capped exponential backoff with full jitter.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How long to wait between acquisition attempts: exponential backoff with *full jitter*
/// (each delay is uniform in `[0, min(cap, base · 2^attempt)]`, the AWS "full jitter" scheme),
/// optionally limited to a number of attempts.
///
/// Full jitter spreads contenders out so they do not collide again at the same instant; the cap
/// bounds how long a waiter can sleep through a release it was not told about.
///
/// # Default
/// `base` 10 ms, `cap` 200 ms, no attempt limit (the [`Context`](crate::Context) deadline ends
/// the wait).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use redquorum::Retry;
///
/// // The seed's LockWithRetryBackoff(lock, 3, 100ms): three retries starting at 100 ms.
/// let retry = Retry::exponential(Duration::from_millis(100), Duration::from_secs(2)).max_attempts(4);
/// let delays: Vec<Duration> = retry.delays_seeded(7).collect();
/// assert_eq!(delays.len(), 3); // 4 attempts: 3 waits between them
/// assert!(delays.iter().zip([100, 200, 400]).all(|(d, max)| *d <= Duration::from_millis(max)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    base: Duration,
    cap: Duration,
    max_attempts: Option<u32>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::exponential(Duration::from_millis(10), Duration::from_millis(200))
    }
}

impl Retry {
    /// Exponential backoff from `base`, doubling up to `cap`, with full jitter and no attempt
    /// limit. A `cap` below `base` is raised to `base`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::Retry;
    ///
    /// // 20 ms, 40 ms, 80 ms, ... up to 1 s between attempts, each scaled by a random factor in 0..=1.
    /// let retry = Retry::exponential(Duration::from_millis(20), Duration::from_secs(1));
    /// assert!(retry.delays().take(10).all(|d| d <= Duration::from_secs(1)));
    /// // A cap below the base is raised to it.
    /// assert_eq!(Retry::exponential(Duration::from_secs(1), Duration::ZERO).cap(), Duration::from_secs(1));
    /// ```
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        let cap = if cap.as_nanos() < base.as_nanos() {
            base
        } else {
            cap
        };
        Retry {
            base,
            cap,
            max_attempts: None,
        }
    }

    /// Stop after `attempts` acquisition attempts in total (the first one included), returning
    /// [`Error::RetriesExhausted`](crate::Error::RetriesExhausted). `0` is treated as `1`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::{RedLock, Retry};
    ///
    /// let retry = Retry::exponential(Duration::from_millis(20), Duration::from_secs(1)).max_attempts(5);
    /// assert_eq!(retry.delays().count(), 4); // 5 attempts, 4 waits between them
    /// let builder = RedLock::builder().retry(retry); // then Error::RetriesExhausted after 5 attempts
    /// # drop(builder);
    /// ```
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(if attempts == 0 { 1 } else { attempts });
        self
    }

    /// The first (largest possible) delay.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::Retry;
    ///
    /// assert_eq!(Retry::default().base(), Duration::from_millis(10));
    /// ```
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::Retry;
    ///
    /// assert_eq!(Retry::default().cap(), Duration::from_millis(200));
    /// ```
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// The attempt limit, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::Retry;
    ///
    /// assert_eq!(Retry::default().attempts_limit(), None); // the context's deadline ends the wait
    /// assert_eq!(Retry::default().max_attempts(3).attempts_limit(), Some(3));
    /// assert_eq!(Retry::default().max_attempts(0).attempts_limit(), Some(1));
    /// ```
    pub const fn attempts_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The delays between attempts, with a random seed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::Retry;
    ///
    /// let retry = Retry::exponential(Duration::from_millis(10), Duration::from_millis(40));
    /// let ceilings = [10, 20, 40, 40, 40];
    /// for (delay, ceiling) in retry.delays().zip(ceilings) {
    ///     assert!(delay <= Duration::from_millis(ceiling)); // full jitter: anywhere in 0..=ceiling
    /// }
    /// ```
    pub fn delays(&self) -> Delays {
        self.delays_with(fastrand::Rng::new())
    }

    /// The delays between attempts with a fixed seed, for reproducible tests.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use redquorum::Retry;
    ///
    /// let retry = Retry::exponential(Duration::from_millis(10), Duration::from_secs(1)).max_attempts(6);
    /// // The same seed gives the same delays: for reproducible tests.
    /// let a: Vec<Duration> = retry.delays_seeded(42).collect();
    /// let b: Vec<Duration> = retry.delays_seeded(42).collect();
    /// assert_eq!(a, b);
    /// assert_eq!(a.len(), 5);
    /// ```
    pub fn delays_seeded(&self, seed: u64) -> Delays {
        self.delays_with(fastrand::Rng::with_seed(seed))
    }

    fn delays_with(&self, rng: fastrand::Rng) -> Delays {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.cap)
            .with_factor(2.0);
        builder = match self.max_attempts {
            Some(n) => builder.with_max_times(n.saturating_sub(1) as usize),
            None => builder.without_max_times(),
        };
        Delays {
            ceilings: builder.build(),
            rng,
        }
    }
}

/// The sequence of delays of a [`Retry`] policy: an `Iterator<Item = Duration>` that ends when
/// the attempt limit is reached.
///
/// ```
/// # use std::time::Duration;
/// # use redquorum::Retry;
/// let mut d = Retry::exponential(Duration::from_millis(1), Duration::from_millis(4)).delays();
/// assert!(d.next().unwrap() <= Duration::from_millis(1));
/// ```
#[derive(Debug)]
pub struct Delays {
    ceilings: backon::ExponentialBackoff,
    rng: fastrand::Rng,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // Full jitter: uniform in [0, ceiling].
        self.ceilings
            .next()
            .map(|ceiling| ceiling.mul_f64(self.rng.f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let r = Retry::exponential(10 * MS, 75 * MS).max_attempts(7);
        let ceilings: Vec<_> = r.delays().ceilings.collect();
        let expected = [10 * MS, 20 * MS, 40 * MS, 75 * MS, 75 * MS, 75 * MS];
        assert_eq!(ceilings.len(), expected.len());
        for (got, want) in ceilings.iter().zip(expected) {
            // backon multiplies in f32: allow a microsecond of rounding.
            assert!(
                got.abs_diff(want) <= Duration::from_micros(1),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn every_delay_is_within_its_ceiling_and_jittered() {
        let r = Retry::exponential(10 * MS, 80 * MS);
        let mut distinct = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut ceilings = r.delays_seeded(seed).ceilings;
            for d in r.delays_seeded(seed).take(6) {
                let c = ceilings.next().expect("unlimited");
                assert!(d <= c, "{d:?} > {c:?}");
                distinct.insert(d);
            }
        }
        // Full jitter uses the whole range, down to near zero.
        assert!(distinct.len() > 1000);
        assert!(distinct.iter().next().is_some_and(|d| *d < MS));
    }

    #[test]
    fn seeded_delays_repeat() {
        let r = Retry::default();
        let a: Vec<_> = r.delays_seeded(42).take(10).collect();
        let b: Vec<_> = r.delays_seeded(42).take(10).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn attempt_limit_counts_the_first_attempt() {
        assert_eq!(Retry::default().max_attempts(1).delays().count(), 0);
        assert_eq!(Retry::default().max_attempts(0).delays().count(), 0);
        assert_eq!(Retry::default().max_attempts(5).delays().count(), 4);
        assert!(Retry::default().delays().take(10_000).count() == 10_000);
    }

    #[test]
    fn cap_below_base_is_raised() {
        let r = Retry::exponential(50 * MS, MS);
        assert_eq!(r.cap(), 50 * MS);
    }
}
