//! A per-thread pool of emptied header maps. Each proxied request builds two (the client's
//! request head, the upstream's response head) and drops both once they are encoded; a map
//! taken from here keeps the table and entry storage of an earlier one (two allocations and
//! two frees less per map), as hyper's server kept one map per connection.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread (each at most [`MAX_KEPT_CAPACITY`] fields).
const POOL: usize = 64;
/// Larger maps (a head with many fields) are dropped rather than kept.
const MAX_KEPT_CAPACITY: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `fields` fields.
pub fn take(fields: usize) -> HeaderMap {
    let kept = MAPS.with(|maps| maps.borrow_mut().pop());
    match kept {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives `map` back once its fields are no longer needed (they are dropped now).
pub fn give(mut map: HeaderMap) {
    // A map that never held a field (a static response's) has no storage worth keeping.
    if map.capacity() == 0 || map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    MAPS.with(|maps| {
        let mut maps = maps.borrow_mut();
        if maps.len() < POOL {
            maps.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn maps_come_back_empty_with_their_room() {
        let mut map = take(4);
        map.insert("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let room = map.capacity();
        give(map);
        let again = take(2);
        assert!(again.is_empty());
        assert!(again.get("x-a").is_none());
        assert!(again.capacity() >= room.min(2));
        let mut big = HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 2);
        big.insert("x-b", HeaderValue::from_static("1"));
        give(big);
        assert!(take(1).capacity() <= MAX_KEPT_CAPACITY);
    }
}
