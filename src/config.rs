//! Server configuration: flags, environment variables (`STROM_*`) and an optional TOML file.
//! A flag or variable wins over the file; the file wins over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4566";
pub const DEFAULT_DATA_DIR: &str = "./strom-data";

#[derive(Debug, Parser)]
#[command(
    name = "strom",
    version,
    about = "Strom: a SQL-first streaming database"
)]
pub struct Cli {
    /// Address of the PostgreSQL-protocol listener.
    #[arg(long, env = "STROM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory holding the catalog and all data (created if missing).
    #[arg(long, env = "STROM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML file with the same settings (`listen`, `data_dir`, `sync_writes`, `log`).
    #[arg(long, env = "STROM_CONFIG")]
    pub config: Option<PathBuf>,
    /// fsync the write-ahead log on every commit (survives power loss, not only crashes).
    #[arg(long, env = "STROM_SYNC_WRITES")]
    pub sync_writes: Option<bool>,
    /// Log filter, e.g. `info` or `strom=debug` (also `RUST_LOG`).
    #[arg(long, env = "STROM_LOG")]
    pub log: Option<String>,
    /// How often the stream runtime injects a barrier (ends an epoch), in milliseconds.
    #[arg(long, env = "STROM_BARRIER_INTERVAL_MS")]
    pub barrier_interval_ms: Option<u64>,
    /// How often a committed epoch is also fsynced (survives power loss), in milliseconds.
    #[arg(long, env = "STROM_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Memory for cached operator state, all views together: bytes or a size such as
    /// `512MiB`, `2GiB`. Default: a quarter of the machine's memory.
    #[arg(long, env = "STROM_MEMORY_BUDGET")]
    pub memory_budget: Option<String>,
    /// Rows a backfilling view reads per source per epoch (smaller: gentler on other work).
    #[arg(long, env = "STROM_BACKFILL_ROWS_PER_EPOCH")]
    pub backfill_rows_per_epoch: Option<usize>,
    /// Workers an aggregation or join runs on, rows routed to them by vnode of the key.
    /// Default: the number of cores.
    #[arg(long, env = "STROM_STREAM_WORKERS")]
    pub stream_workers: Option<usize>,
    /// Fewest input rows in an epoch for which an operator's workers run on threads
    /// (below it they run one after another). For tests and tuning.
    #[arg(long, env = "STROM_STREAM_PARALLEL_MIN_ROWS", hide = true)]
    pub stream_parallel_min_rows: Option<usize>,
    /// Once listening, write the address bound to this file (created whole, by rename).
    /// With `--listen 127.0.0.1:0` a harness learns the port the kernel chose, with no race
    /// between probing for a free port and binding it.
    #[arg(long, env = "STROM_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    sync_writes: Option<bool>,
    log: Option<String>,
    barrier_interval_ms: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    memory_budget: Option<String>,
    backfill_rows_per_epoch: Option<usize>,
    stream_workers: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub sync_writes: bool,
    pub log: String,
    pub barrier_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    pub memory_budget: usize,
    pub backfill_rows_per_epoch: usize,
    pub stream_workers: usize,
    pub stream_parallel_min_rows: usize,
    pub ready_file: Option<PathBuf>,
}

pub const DEFAULT_BARRIER_INTERVAL_MS: u64 = 20;
pub const DEFAULT_BACKFILL_ROWS_PER_EPOCH: usize = 65_536;
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// Parses `1048576`, `512MiB`, `64MB`, `2GiB`, `1G`, `100k` (binary multiples).
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| anyhow::anyhow!("bad size {text:?}: expected e.g. 512MiB or 2GiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => anyhow::bail!("bad size {text:?}: unknown unit {unit:?} (use KiB, MiB or GiB)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("size {text:?} is too large"))
}

/// A quarter of physical memory (256 MiB if it cannot be read).
fn default_memory_budget() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
    });
    total_kib.map_or(256 << 20, |k| k * 1024 / 4)
}

impl Config {
    pub fn resolve(cli: Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Ok(Config {
            listen: cli.listen.or(file.listen).unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .expect("invariant: default address parses")
            }),
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            sync_writes: cli.sync_writes.or(file.sync_writes).unwrap_or(false),
            barrier_interval_ms: positive(
                "barrier_interval_ms",
                cli.barrier_interval_ms
                    .or(file.barrier_interval_ms)
                    .unwrap_or(DEFAULT_BARRIER_INTERVAL_MS),
            )?,
            checkpoint_interval_ms: positive(
                "checkpoint_interval_ms",
                cli.checkpoint_interval_ms
                    .or(file.checkpoint_interval_ms)
                    .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS),
            )?,
            memory_budget: match cli.memory_budget.or(file.memory_budget) {
                Some(s) => parse_size(&s)?,
                None => default_memory_budget(),
            },
            backfill_rows_per_epoch: positive(
                "backfill_rows_per_epoch",
                cli.backfill_rows_per_epoch
                    .or(file.backfill_rows_per_epoch)
                    .unwrap_or(DEFAULT_BACKFILL_ROWS_PER_EPOCH) as u64,
            )? as usize,
            stream_workers: match cli.stream_workers.or(file.stream_workers) {
                Some(n) => positive("stream_workers", n as u64)? as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            stream_parallel_min_rows: cli.stream_parallel_min_rows.unwrap_or(4096),
            ready_file: cli.ready_file,
            log: cli
                .log
                .or(file.log)
                .or_else(|| std::env::var("RUST_LOG").ok())
                .unwrap_or_else(|| "info".to_string()),
        })
    }
}

fn positive(name: &str, v: u64) -> anyhow::Result<u64> {
    if v == 0 {
        anyhow::bail!("{name} must be greater than 0");
    }
    Ok(v)
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("bad config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("strom-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("strom.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/x\"\n").unwrap();
        let cli = Cli::parse_from([
            "strom",
            "--config",
            f.to_str().unwrap(),
            "--data-dir",
            "/tmp/y",
        ]);
        let c = Config::resolve(cli).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/y"));
        std::fs::write(&f, "listen = \"127.0.0.1:7000\"\nbogus = 1\n").unwrap();
        let cli = Cli::parse_from(["strom", "--config", f.to_str().unwrap()]);
        let err = Config::resolve(cli).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn sizes_parse_with_binary_units_and_reject_nonsense() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64mb").unwrap(), 64 << 20);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
