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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    sync_writes: Option<bool>,
    log: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub sync_writes: bool,
    pub log: String,
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
            log: cli
                .log
                .or(file.log)
                .or_else(|| std::env::var("RUST_LOG").ok())
                .unwrap_or_else(|| "info".to_string()),
        })
    }
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
}
