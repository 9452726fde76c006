//! What the comparison benchmarks share: redquorum and rslock side by side on the same masters.
use std::time::Duration;

use redquorum::RedLock;
use rslock::LockManager;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Res<T> = Result<T, BoxError>;

/// Both libraries lock with this TTL.
pub const TTL: Duration = Duration::from_secs(10);
/// Library 0 and library 1.
pub const NAMES: [&str; 2] = ["redquorum", "rslock"];

/// The two clients on the same masters, at their defaults.
#[derive(Clone)]
pub struct Libs {
    pub rq: RedLock,
    pub rs: LockManager,
}

impl Libs {
    /// Connects both and warms up their connections (200 cycles each).
    pub async fn new(urls: &[String]) -> Res<Libs> {
        let rq = RedLock::builder().nodes(urls).ttl(TTL).build().await?;
        let rs = LockManager::new(urls.to_vec());
        let libs = Libs { rq, rs };
        for lib in 0..2 {
            for _ in 0..200 {
                libs.cycle(lib, "warm-up").await?;
            }
        }
        Ok(libs)
    }

    /// One uncontended acquire + release by library `lib` (0 redquorum, 1 rslock).
    pub async fn cycle(&self, lib: usize, key: &str) -> Res<()> {
        if lib == 0 {
            let guard = self.rq.try_acquire(key).await?.ok_or("key was held")?;
            guard.release().await?;
        } else {
            let lock = self.rs.lock(key, TTL).await?;
            self.rs.unlock(&lock).await;
        }
        Ok(())
    }
}
