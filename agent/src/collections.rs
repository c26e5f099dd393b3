//! Hash maps and sets of the capture path, hashed with foldhash: a few times cheaper than the
//! standard library's SipHash for the small keys used here (connection keys, 4-tuples, pids),
//! and still seeded per process, so peers cannot choose colliding keys in advance.

/// A `HashMap` with foldhash; make one with `HashMap::default()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A `HashSet` with foldhash; make one with `HashSet::default()`.
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
