//! Keys whose snapshot cannot be read: each command for one is answered `failed` until an
//! operator deletes or repairs the snapshot (docs/operations.md). The aggregate processors
//! of one instance share this list, so the console can name the keys, and keep the gauge
//! `millrace_quarantined_keys` in step with it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One quarantined key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    pub store: String,
    pub key: String,
    pub reason: String,
    /// Unix time in milliseconds when a command first met it here.
    pub since_ms: i64,
}

#[derive(Debug, Default)]
pub struct Quarantine {
    keys: Mutex<BTreeMap<(String, String), (String, i64)>>,
}

impl Quarantine {
    /// Puts `key` of `store` in quarantine; false if it was already.
    pub fn add(&self, store: &str, key: &str, reason: &str, now_ms: i64) -> bool {
        let mut keys = self.keys.lock().expect("quarantine lock");
        let std::collections::btree_map::Entry::Vacant(entry) = keys.entry((store.to_string(), key.to_string())) else {
            return false;
        };
        entry.insert((reason.to_string(), now_ms));
        metrics::gauge!("millrace_quarantined_keys", "store" => store.to_string()).increment(1.0);
        true
    }

    /// Takes `key` of `store` out (its snapshot was repaired, deleted or written anew, or
    /// its partition left this instance); false if it was not in.
    pub fn remove(&self, store: &str, key: &str) -> bool {
        let removed = self.keys.lock().expect("quarantine lock").remove(&(store.to_string(), key.to_string())).is_some();
        if removed {
            metrics::gauge!("millrace_quarantined_keys", "store" => store.to_string()).decrement(1.0);
        }
        removed
    }

    pub fn list(&self) -> Vec<Quarantined> {
        self.keys
            .lock()
            .expect("quarantine lock")
            .iter()
            .map(|((store, key), (reason, since_ms))| Quarantined { store: store.clone(), key: key.clone(), reason: reason.clone(), since_ms: *since_ms })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_enter_once_and_leave_once() {
        let q = Quarantine::default();
        assert!(q.add("customers", "k1", "bad bytes", 5));
        assert!(!q.add("customers", "k1", "again", 6), "already in");
        assert!(q.add("orders", "k1", "other store", 7));
        assert_eq!(q.list().len(), 2);
        assert_eq!(q.list()[0], Quarantined { store: "customers".into(), key: "k1".into(), reason: "bad bytes".into(), since_ms: 5 });
        assert!(q.remove("customers", "k1"));
        assert!(!q.remove("customers", "k1"));
        assert_eq!(q.list().len(), 1);
    }
}
