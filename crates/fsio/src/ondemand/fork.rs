//! Regions and `fork`: before a fork every live region is filled whole, so the child,
//! whose copy of a region is plain memory without a handler, sees every byte.

use std::sync::{Arc, Mutex, Weak};

use super::Region;

/// Live regions, for the fork handler.
static LIVE: Mutex<Vec<Weak<Region>>> = Mutex::new(Vec::new());

pub(super) fn register_for_fork(region: &Arc<Region>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a prepare handler that only fills regions (no async-signal
        // constraints apply before the fork).
        unsafe { libc::pthread_atfork(Some(before_fork), None, None) };
    });
    let mut live = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(region));
}

extern "C" fn before_fork() {
    let live: Vec<Arc<Region>> = {
        let l = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.iter().filter_map(Weak::upgrade).collect()
    };
    for r in live {
        r.fill_all();
    }
}
