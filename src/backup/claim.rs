//! One operation at a time per key in this process (a database being
//! restored, a backup file being written): a key held in a process-wide set
//! from [`Claim::take`] until the claim is dropped, on every path out.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

/// The keys claimed now, in one static per kind of operation.
pub(super) type Claims<K> = Mutex<Option<HashSet<K>>>;

/// `key`, held in `set` until dropped.
pub(super) struct Claim<K: Eq + Hash + 'static> {
    set: &'static Claims<K>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone + 'static> Claim<K> {
    /// Claims `key`; None while another claim holds it.
    pub(super) fn take(set: &'static Claims<K>, key: K) -> Option<Claim<K>> {
        let mut held = set.lock().unwrap_or_else(|e| e.into_inner());
        if !held.get_or_insert_with(HashSet::new).insert(key.clone()) {
            return None;
        }
        Some(Claim {
            set,
            key: Some(key),
        })
    }
}

impl<K: Eq + Hash + 'static> Drop for Claim<K> {
    fn drop(&mut self) {
        let mut held = self.set.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(set), Some(key)) = (held.as_mut(), self.key.take()) {
            set.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static KEYS: Claims<u32> = Mutex::new(None);

    #[test]
    fn a_key_is_held_until_its_claim_is_dropped() {
        let first = Claim::take(&KEYS, 1).expect("free");
        assert!(Claim::take(&KEYS, 1).is_none(), "held");
        assert!(Claim::take(&KEYS, 2).is_some(), "another key is free");
        drop(first);
        assert!(Claim::take(&KEYS, 1).is_some(), "free again");
    }
}
