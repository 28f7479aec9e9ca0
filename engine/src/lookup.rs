//! External lookup tables: `CREATE TABLE ... WITH (connector = 'postgres' | 'mysql', mode =
//! 'lookup')`. Nothing is ingested; a processing-time temporal join fetches the rows it
//! needs by key from the business database (see [`crate::stream::lookup_join`]), and a
//! `SELECT` reads through to it.
//!
//! The engine only knows the [`ExternalTable`] trait; the connectors crate implements it
//! and registers a factory with [`register`] at startup. This module also holds what the
//! join adds on top: the lookup options ([`LookupOptions`]), the cache ([`LookupCache`])
//! and the counters `strom_catalog.lookup_status` shows ([`LookupStats`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use futures::future::BoxFuture;
use strom_catalog::{TableDef, TableId};

use crate::error::{EngineError, Result};

/// Why a lookup in an external table failed.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupError {
    /// The database cannot be reached or cannot answer now (connection refused or lost,
    /// a timeout, a server shutting down or out of connections): the rows wait and are
    /// retried once the database answers again.
    Unavailable(String),
    /// The database answered with an error retrying cannot fix (a column that does not
    /// exist, a key type that does not compare, a value that does not read as the
    /// declared type): the view fails with it.
    Invalid(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::Unavailable(m) | LookupError::Invalid(m) => f.write_str(m),
        }
    }
}

/// A table that lives in another database and is read by key.
pub trait ExternalTable: Send + Sync + std::fmt::Debug {
    /// The rows whose `columns` (indices of the table's columns) equal one of `keys` (each
    /// as many non-NULL values as `columns`, in the columns' declared types), as a batch
    /// of the table's columns, with the index in `keys` of the key each row matched (the
    /// database's own comparison decides: collations, padding). Blocking (it is called on
    /// the epoch thread); it retries an unavailable database `lookup.max-retries` times.
    fn fetch(
        &self,
        columns: &[usize],
        keys: &[Vec<ScalarValue>],
    ) -> std::result::Result<(Vec<u32>, RecordBatch), LookupError>;

    /// Starts checking, in the background, whether the database answers; the result
    /// arrives on the returned channel. While rows wait for the database the join asks
    /// this instead of blocking the epoch on a database that is away.
    fn check(&self) -> std::sync::mpsc::Receiver<std::result::Result<(), String>>;

    /// Every row, for `SELECT` (projection: column indices; None: all).
    fn scan(
        &self,
        projection: Option<Vec<usize>>,
    ) -> BoxFuture<'static, std::result::Result<RecordBatch, String>>;
}

type Factory = fn(&TableDef) -> std::result::Result<Arc<dyn ExternalTable>, String>;

static FACTORY: OnceLock<Factory> = OnceLock::new();

/// Installs the function that opens external tables (the connectors crate's).
pub fn register(factory: Factory) {
    let _ = FACTORY.set(factory);
}

/// Whether a relation is an external lookup table.
pub fn is_external(def: &TableDef) -> bool {
    def.connector
        .as_ref()
        .is_some_and(|c| c.options.get("mode").map(String::as_str) == Some("lookup"))
}

/// The client of an external lookup table.
pub fn open(def: &TableDef) -> Result<Arc<dyn ExternalTable>> {
    let factory = FACTORY.get().ok_or_else(|| {
        EngineError::Internal("no connector for external lookup tables is registered".into())
    })?;
    factory(def).map_err(|e| EngineError::Unsupported(format!("table \"{}\": {e}", def.name)))
}

/// A duration option: `10 min`, `30s`, `500 ms`, `1h`, `2 days`, or a number of seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, "s"),
    };
    let n: f64 = num.trim().parse().ok().filter(|n: &f64| *n >= 0.0)?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// The `lookup.*` options of an external table (Flink's names; `max-rows` defaults to
/// 10,000 where Flink has no default).
#[derive(Debug, Clone, PartialEq)]
pub struct LookupOptions {
    /// `lookup.cache = 'PARTIAL'` (default `'NONE'`: every row is fetched).
    pub cache: bool,
    /// `lookup.partial-cache.max-rows`: keys kept (default 10,000).
    pub max_rows: usize,
    /// `lookup.partial-cache.expire-after-write`.
    pub expire_after_write: Option<Duration>,
    /// `lookup.partial-cache.expire-after-access`.
    pub expire_after_access: Option<Duration>,
    /// `lookup.partial-cache.caching-missing-key` (Flink's name; `cache-missing-key` is
    /// accepted too; default true): a key the database does not have is cached as
    /// missing.
    pub cache_missing_key: bool,
    /// `lookup.max-retries` (default 3): retries of a failed query before the rows wait.
    pub max_retries: u32,
}

/// The option names [`LookupOptions::parse`] reads.
pub const LOOKUP_OPTIONS: &[&str] = &[
    "lookup.cache",
    "lookup.partial-cache.max-rows",
    "lookup.partial-cache.expire-after-write",
    "lookup.partial-cache.expire-after-access",
    "lookup.partial-cache.caching-missing-key",
    "lookup.partial-cache.cache-missing-key",
    "lookup.max-retries",
];

impl LookupOptions {
    pub fn parse(options: &BTreeMap<String, String>) -> std::result::Result<Self, String> {
        let get = |k: &str| options.get(k).map(|v| v.trim());
        let cache = match get("lookup.cache").map(str::to_ascii_uppercase).as_deref() {
            None | Some("NONE") => false,
            Some("PARTIAL") => true,
            Some(other) => {
                return Err(format!(
                    "lookup.cache = '{other}' is not supported (use 'NONE' or 'PARTIAL')"
                ))
            }
        };
        let duration = |k: &str| -> std::result::Result<Option<Duration>, String> {
            get(k)
                .map(|v| {
                    parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                        format!("{k} = '{v}' is not a duration like '10 min' or '30s'")
                    })
                })
                .transpose()
        };
        let number = |k: &str, default: u64| -> std::result::Result<u64, String> {
            get(k).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("{k} = '{v}' is not a non-negative integer"))
            })
        };
        let max_rows = number("lookup.partial-cache.max-rows", 10_000)?;
        if max_rows == 0 {
            return Err("lookup.partial-cache.max-rows must be at least 1".into());
        }
        let cache_missing_key = match get("lookup.partial-cache.caching-missing-key")
            .or_else(|| get("lookup.partial-cache.cache-missing-key"))
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(format!(
                    "lookup.partial-cache.caching-missing-key = '{other}' is not true or false"
                ))
            }
        };
        let partial_only = [
            "lookup.partial-cache.max-rows",
            "lookup.partial-cache.expire-after-write",
            "lookup.partial-cache.expire-after-access",
            "lookup.partial-cache.caching-missing-key",
            "lookup.partial-cache.cache-missing-key",
        ];
        if !cache {
            if let Some(k) = partial_only.iter().find(|k| options.contains_key(**k)) {
                return Err(format!("{k} needs lookup.cache = 'PARTIAL'"));
            }
        }
        Ok(LookupOptions {
            cache,
            max_rows: max_rows as usize,
            expire_after_write: duration("lookup.partial-cache.expire-after-write")?,
            expire_after_access: duration("lookup.partial-cache.expire-after-access")?,
            cache_missing_key,
            max_retries: u32::try_from(number("lookup.max-retries", 3)?)
                .map_err(|_| "lookup.max-retries is too large".to_string())?,
        })
    }
}

#[derive(Debug)]
struct CacheEntry {
    /// The dimension rows with this key (empty: the database has none).
    rows: Arc<Vec<Vec<ScalarValue>>>,
    written: Instant,
    accessed: Instant,
    /// For eviction: the access counter when last read.
    tick: u64,
}

/// A bounded cache of dimension rows by encoded key, with expiry after write and/or after
/// access. When full it drops the least recently used eighth (approximately LRU, O(1)
/// amortised per insert).
#[derive(Debug)]
pub struct LookupCache {
    entries: HashMap<Vec<u8>, CacheEntry>,
    max_rows: usize,
    after_write: Option<Duration>,
    after_access: Option<Duration>,
    tick: u64,
}

impl LookupCache {
    pub fn new(o: &LookupOptions) -> Self {
        LookupCache {
            entries: HashMap::new(),
            max_rows: o.max_rows,
            after_write: o.expire_after_write,
            after_access: o.expire_after_access,
            tick: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached rows of `key`, unless absent or expired (an expired entry is removed).
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Arc<Vec<Vec<ScalarValue>>>> {
        let e = self.entries.get_mut(key)?;
        let expired = self
            .after_write
            .is_some_and(|d| now.duration_since(e.written) >= d)
            || self
                .after_access
                .is_some_and(|d| now.duration_since(e.accessed) >= d);
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.tick += 1;
        e.accessed = now;
        e.tick = self.tick;
        Some(Arc::clone(&e.rows))
    }

    pub fn put(&mut self, key: Vec<u8>, rows: Arc<Vec<Vec<ScalarValue>>>, now: Instant) {
        if self.entries.len() >= self.max_rows && !self.entries.contains_key(&key) {
            self.evict();
        }
        self.tick += 1;
        self.entries.insert(
            key,
            CacheEntry {
                rows,
                written: now,
                accessed: now,
                tick: self.tick,
            },
        );
    }

    /// Drops the expired entries, or else the least recently used eighth (at least one).
    fn evict(&mut self) {
        let now = Instant::now();
        let (write, access) = (self.after_write, self.after_access);
        self.entries.retain(|_, e| {
            !(write.is_some_and(|d| now.duration_since(e.written) >= d)
                || access.is_some_and(|d| now.duration_since(e.accessed) >= d))
        });
        if self.entries.len() < self.max_rows {
            return;
        }
        let drop = (self.entries.len() / 8).max(1);
        let mut ticks: Vec<u64> = self.entries.values().map(|e| e.tick).collect();
        let (_, &mut cut, _) = ticks.select_nth_unstable(drop - 1);
        self.entries.retain(|_, e| e.tick > cut);
    }
}

/// Counters of one temporal join with an external table (since the server started).
#[derive(Debug)]
pub struct LookupStats {
    pub view: TableId,
    pub dimension: String,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Rows fetched from the database.
    pub fetched: AtomicU64,
    /// Failed attempts (after the connector's own retries).
    pub errors: AtomicU64,
    /// Input rows waiting for the database to answer.
    pub waiting: AtomicU64,
    pub cached: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl LookupStats {
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().expect("stats lock") = e;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("stats lock").clone()
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

static STATS: Mutex<Vec<Weak<LookupStats>>> = Mutex::new(Vec::new());

/// New counters for a join in `view` with `dimension`, listed by [`all_stats`] while the
/// join exists.
pub fn new_stats(view: TableId, dimension: &str) -> Arc<LookupStats> {
    let s = Arc::new(LookupStats {
        view,
        dimension: dimension.to_string(),
        hits: AtomicU64::new(0),
        misses: AtomicU64::new(0),
        fetched: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        waiting: AtomicU64::new(0),
        cached: AtomicU64::new(0),
        last_error: Mutex::new(None),
    });
    let mut all = STATS.lock().expect("stats lock");
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&s));
    s
}

/// The counters of every live temporal join with an external table.
pub fn all_stats() -> Vec<Arc<LookupStats>> {
    STATS
        .lock()
        .expect("stats lock")
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> std::result::Result<LookupOptions, String> {
        LookupOptions::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn options_parse_with_flink_defaults_and_reject_nonsense() {
        let o = opts(&[]).unwrap();
        assert!(!o.cache);
        assert_eq!(
            (o.max_rows, o.max_retries, o.cache_missing_key),
            (10_000, 3, true)
        );
        let o = opts(&[
            ("lookup.cache", "partial"),
            ("lookup.partial-cache.max-rows", "200000"),
            ("lookup.partial-cache.expire-after-write", "10 min"),
            ("lookup.partial-cache.expire-after-access", "500ms"),
            ("lookup.partial-cache.caching-missing-key", "false"),
            ("lookup.max-retries", "0"),
        ])
        .unwrap();
        assert!(o.cache && !o.cache_missing_key);
        assert_eq!(o.max_rows, 200_000);
        assert_eq!(o.expire_after_write, Some(Duration::from_secs(600)));
        assert_eq!(o.expire_after_access, Some(Duration::from_millis(500)));
        assert_eq!(o.max_retries, 0);
        for bad in [
            ("lookup.cache", "FULL"),
            ("lookup.max-retries", "-1"),
            ("lookup.max-retries", "x"),
        ] {
            assert!(opts(&[bad]).is_err(), "{bad:?}");
        }
        let e = opts(&[("lookup.partial-cache.max-rows", "5")]).unwrap_err();
        assert!(e.contains("needs lookup.cache = 'PARTIAL'"), "{e}");
        let e = opts(&[
            ("lookup.cache", "PARTIAL"),
            ("lookup.partial-cache.expire-after-write", "soon"),
        ])
        .unwrap_err();
        assert!(e.contains("is not a duration"), "{e}");
    }

    #[test]
    fn cache_expires_and_evicts_the_least_recently_used() {
        let mut o = opts(&[("lookup.cache", "PARTIAL")]).unwrap();
        o.max_rows = 8;
        o.expire_after_write = Some(Duration::from_secs(10));
        let mut c = LookupCache::new(&o);
        let t0 = Instant::now();
        let row = |i: i64| Arc::new(vec![vec![ScalarValue::Int64(Some(i))]]);
        for i in 0..8u8 {
            c.put(vec![i], row(i as i64), t0);
        }
        // Key 0 is read, so key 1 is now the least recently used.
        assert!(c.get(&[0], t0).is_some());
        c.put(vec![100], row(100), t0);
        assert_eq!(c.len(), 8);
        assert!(c.get(&[1], t0).is_none(), "least recently used was evicted");
        assert!(c.get(&[0], t0).is_some());
        // Expiry after write, even when read meanwhile.
        assert!(c.get(&[0], t0 + Duration::from_secs(9)).is_some());
        assert!(c.get(&[0], t0 + Duration::from_secs(10)).is_none());
        assert!(c.get(&[0], t0).is_none(), "expired entries are removed");

        o.expire_after_write = None;
        o.expire_after_access = Some(Duration::from_secs(5));
        let mut c = LookupCache::new(&o);
        c.put(vec![1], row(1), t0);
        assert!(c.get(&[1], t0 + Duration::from_secs(4)).is_some());
        assert!(
            c.get(&[1], t0 + Duration::from_secs(8)).is_some(),
            "access renews"
        );
        assert!(c.get(&[1], t0 + Duration::from_secs(14)).is_none());
    }
}
