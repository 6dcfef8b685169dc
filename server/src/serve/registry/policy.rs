//! Which loaded models to unload, as pure functions of what the registry sees: the least
//! recently used idle model makes room for a new one (`--max-loaded-models`), and a model
//! idle longer than its keep-alive goes on its own (`--keep-alive`). A model is never
//! unloaded while a request uses it, while it is still loading, or when it is pinned.

use std::time::{Duration, Instant};

/// What the policy needs to know about one loaded model.
#[derive(Debug, Clone, Copy)]
pub struct LoadedView {
    /// Index of the model in the registry.
    pub index: usize,
    /// Requests holding it now (generations, including streams still sending).
    pub in_use: usize,
    pub ready: bool,
    pub pinned: bool,
    /// When the last request using it ended (or when it finished loading).
    pub last_used: Instant,
    pub keep_alive: Option<Duration>,
}

impl LoadedView {
    fn evictable(&self) -> bool {
        self.in_use == 0 && self.ready && !self.pinned
    }
}

/// Room for one more model under `max_loaded` (0: no limit): `Ok(None)` when there is room,
/// `Ok(Some(index))` for the model to unload first (the least recently used evictable one),
/// `Err(())` when every loaded model is busy, loading or pinned.
#[allow(clippy::result_unit_err)]
pub fn make_room(loaded: &[LoadedView], max_loaded: usize) -> Result<Option<usize>, ()> {
    if max_loaded == 0 || loaded.len() < max_loaded {
        return Ok(None);
    }
    loaded.iter().filter(|m| m.evictable()).min_by_key(|m| m.last_used).map(|m| Some(m.index)).ok_or(())
}

/// The models whose keep-alive has run out at `now`.
pub fn expired(loaded: &[LoadedView], now: Instant) -> Vec<usize> {
    loaded
        .iter()
        .filter(|m| m.evictable())
        .filter(|m| m.keep_alive.is_some_and(|k| now.saturating_duration_since(m.last_used) >= k))
        .map(|m| m.index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(index: usize, idle_s: u64, now: Instant) -> LoadedView {
        LoadedView {
            index,
            in_use: 0,
            ready: true,
            pinned: false,
            last_used: now - Duration::from_secs(idle_s),
            keep_alive: None,
        }
    }

    #[test]
    fn room_is_made_by_the_least_recently_used_idle_model() {
        let now = Instant::now();
        let loaded = [view(0, 5, now), view(1, 50, now), view(2, 20, now)];
        assert_eq!(make_room(&loaded, 0), Ok(None), "no limit");
        assert_eq!(make_room(&loaded, 4), Ok(None), "under the limit");
        assert_eq!(make_room(&loaded, 3), Ok(Some(1)));
        assert_eq!(make_room(&loaded, 2), Ok(Some(1)), "one at a time: the caller asks again");
    }

    #[test]
    fn busy_loading_and_pinned_models_stay() {
        let now = Instant::now();
        let mut loaded = [view(0, 5, now), view(1, 50, now), view(2, 20, now)];
        loaded[1].in_use = 1;
        assert_eq!(make_room(&loaded, 3), Ok(Some(2)));
        loaded[2].pinned = true;
        assert_eq!(make_room(&loaded, 3), Ok(Some(0)));
        loaded[0].ready = false;
        assert_eq!(make_room(&loaded, 3), Err(()), "nothing can go");
    }

    #[test]
    fn keep_alive_expires_idle_models_only() {
        let now = Instant::now();
        let mut loaded = [view(0, 5, now), view(1, 50, now), view(2, 20, now), view(3, 100, now)];
        for m in &mut loaded[..3] {
            m.keep_alive = Some(Duration::from_secs(10));
        }
        // Model 3 has no keep-alive: kept however long it idles.
        assert_eq!(expired(&loaded, now), vec![1, 2]);
        loaded[1].in_use = 2;
        loaded[2].pinned = true;
        assert!(expired(&loaded, now).is_empty());
    }
}
