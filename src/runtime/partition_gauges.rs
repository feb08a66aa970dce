//! Gauges about one partition this instance holds: input lag, keys in a store partition,
//! a restore's remaining records, a standby copy's lag. Such a series must leave /metrics
//! with its partition. Left behind after a revoke it describes a partition the instance no
//! longer has, frozen at its last value, and a dashboard that sums lag over the instances
//! counts that partition twice. The `metrics` facade cannot delete a series, so these are
//! kept here, removed when their partition goes, and rendered after the recorder's output.
//!
//! Process-wide, like the metrics recorder it extends: every engine, restore and standby
//! of the process writes to the one /metrics page.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// Input lag of a partition: last stable offset minus the position handed to processing.
pub const CONSUMER_LAG: &str = "millrace_consumer_lag";
/// RocksDB's estimate of the keys in a store partition.
pub const STORE_KEYS: &str = "millrace_store_keys";
/// Changelog records a running restore has still to apply.
pub const RESTORE_REMAINING: &str = "millrace_restore_remaining";
/// Changelog records a standby copy is behind.
pub const STANDBY_LAG: &str = "millrace_standby_lag";

/// `topic` for input lag, `store` for the others.
fn scope_label(name: &str) -> &'static str {
    if name == CONSUMER_LAG { "topic" } else { "store" }
}

/// (gauge name, topic or store, partition) → value.
type Series = BTreeMap<(&'static str, String, i32), f64>;

fn series() -> &'static Mutex<Series> {
    static SERIES: OnceLock<Mutex<Series>> = OnceLock::new();
    SERIES.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Sets gauge `name` of partition `partition` of `scope` (a topic or a store).
pub fn set(name: &'static str, scope: &str, partition: i32, value: f64) {
    series().lock().expect("partition gauges lock").insert((name, scope.to_string(), partition), value);
}

/// Removes the gauges `names` of partition `partition` of `scope`: it is no longer here.
pub fn remove(names: &[&'static str], scope: &str, partition: i32) {
    let mut s = series().lock().expect("partition gauges lock");
    for name in names {
        s.remove(&(*name, scope.to_string(), partition));
    }
}

/// Every series, as `(gauge name, topic or store, partition, value)`, in render order.
pub fn all() -> Vec<(&'static str, String, i32, f64)> {
    series().lock().expect("partition gauges lock").iter().map(|((n, s, p), v)| (*n, s.clone(), *p, *v)).collect()
}

/// The current series, in the Prometheus text format.
pub fn render() -> String {
    let s = series().lock().expect("partition gauges lock");
    let mut out = String::new();
    let mut last = "";
    for ((name, scope, partition), value) in s.iter() {
        if *name != last {
            let _ = writeln!(out, "# TYPE {name} gauge");
            last = name;
        }
        let _ = writeln!(out, "{name}{{{}=\"{scope}\",partition=\"{partition}\"}} {value}", scope_label(name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_partition_leaves_the_page_and_others_stay() {
        set(STORE_KEYS, "unit-store", 0, 5.0);
        set(STORE_KEYS, "unit-store", 1, 7.0);
        set(CONSUMER_LAG, "unit-topic", 1, 3.0);
        let page = render();
        assert!(page.contains("# TYPE millrace_store_keys gauge\n"), "{page}");
        assert!(page.contains("millrace_store_keys{store=\"unit-store\",partition=\"1\"} 7\n"), "{page}");
        assert!(page.contains("millrace_consumer_lag{topic=\"unit-topic\",partition=\"1\"} 3\n"), "{page}");
        remove(&[STORE_KEYS, CONSUMER_LAG], "unit-store", 1);
        remove(&[CONSUMER_LAG], "unit-topic", 1);
        let page = render();
        assert!(!page.contains("unit-store\",partition=\"1\""), "{page}");
        assert!(!page.contains("unit-topic"), "{page}");
        assert!(page.contains("millrace_store_keys{store=\"unit-store\",partition=\"0\"} 5\n"), "{page}");
        assert_eq!(page.matches("# TYPE millrace_store_keys gauge").count(), 1, "{page}");
    }
}
