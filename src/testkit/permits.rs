//! The semaphore check: how many holds of one key were trusted at once, and whether that ever
//! passed the number of permits.

use std::collections::BTreeMap;

use super::HoldRecord;

/// Violations of a semaphore's bound among `holds` (grouped by key): each time more than
/// `permits` holds of one key were within their validity at once (one violation per such
/// episode, naming the clients), and the most holds of one key ever trusted at once (for the
/// concurrency a run reached: a semaphore checker that never sees `permits` holders has not
/// tested the bound).
///
/// ```
/// use redquorum::testkit::{check_permits, HoldRecord};
/// use std::time::Duration;
/// use tokio::time::Instant;
/// let t = Instant::now();
/// let ms = Duration::from_millis;
/// let hold = |client, start, end| HoldRecord {
///     key: "k".into(), client, token: None, shared: true,
///     start: t + ms(start), end: t + ms(end), valid_until: t + ms(end + 100),
/// };
/// let two = [hold(0, 0, 10), hold(1, 5, 20), hold(2, 10, 30)];
/// assert_eq!(check_permits(&two, 2), (vec![], 2));
/// let three = [hold(0, 0, 10), hold(1, 5, 20), hold(2, 6, 30)];
/// let (violations, most) = check_permits(&three, 2);
/// assert_eq!((violations.len(), most), (1, 3));
/// ```
pub fn check_permits(holds: &[HoldRecord], permits: usize) -> (Vec<String>, usize) {
    let mut by_key: BTreeMap<&str, Vec<&HoldRecord>> = BTreeMap::new();
    for h in holds {
        by_key.entry(&h.key).or_default().push(h);
    }
    let mut violations = Vec::new();
    let mut most = 0;
    for (key, hs) in by_key {
        // Ends sort before starts at the same instant: a hold that ends as another starts
        // did not overlap it.
        let mut events: Vec<(tokio::time::Instant, bool, usize)> = Vec::new();
        for h in hs.iter().filter(|h| h.start < h.trusted_end()) {
            events.push((h.start, true, h.client));
            events.push((h.trusted_end(), false, h.client));
        }
        events.sort_by_key(|(at, start, _)| (*at, *start));
        let mut inside: Vec<usize> = Vec::new();
        for (_, start, client) in events {
            if start {
                inside.push(client);
                most = most.max(inside.len());
                if inside.len() == permits.saturating_add(1) {
                    violations.push(format!(
                        "key {key:?}: {} holders at once with {permits} permits (clients {inside:?})",
                        inside.len()
                    ));
                }
            } else if let Some(i) = inside.iter().position(|c| *c == client) {
                inside.remove(i);
            }
        }
    }
    (violations, most)
}
