//! The `strom` server binary: configuration, logging, the pgwire listener, shutdown.
//!
//! Reading order: [`config`] → [`pg::handler`] (protocol) → [`session`] (one statement) →
//! [`query`] / [`dml`] / [`ddl`] → `strom_engine`.

mod config;
mod ddl;
mod dml;
mod error;
mod functions;
mod jsonb;
mod pg;
mod pg_casts;
mod pg_catalog;
mod pg_literals;
mod query;
mod session;
mod system;
mod views;

use std::sync::Arc;

use clap::Parser;
use std::time::Duration;

use strom_engine::stream::runtime::{RuntimeConfig, StreamRuntime};
use strom_engine::{Database, StoreOptions};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::config::{Cli, Config};

/// mimalloc instead of glibc's malloc: operators allocate many small, short-lived buffers
/// (keys, rows, batches) across worker threads, and glibc's malloc/free with its arena
/// consolidation took ~30% of the CPU of Nexmark q5 (`docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::resolve(Cli::parse())?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    // Before the database opens: its change log may hold generator rows by reference,
    // and views' temporal joins may open lookup tables.
    strom_connectors::register();
    let db = Database::open(
        &config.data_dir,
        StoreOptions {
            sync_writes: config.sync_writes,
        },
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let db = Arc::new(db);
    let stream = StreamRuntime::new(
        Arc::clone(&db),
        RuntimeConfig {
            barrier_interval: Duration::from_millis(config.barrier_interval_ms),
            checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
            memory_budget: config.memory_budget,
            backfill_batch: config.backfill_rows_per_epoch,
            workers: config.stream_workers,
            parallel_min_rows: config.stream_parallel_min_rows,
        },
    )?;
    views::deploy_all(&db, &stream).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot redeploy materialized views: {}",
            e.code_and_message().1
        )
    })?;
    stream.start();
    strom_connectors::Connectors::start(Arc::clone(&db));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let bound = listener.local_addr()?;
    if let Some(path) = &config.ready_file {
        write_ready_file(path, bound)?;
    }
    info!(listen = %bound, data_dir = %config.data_dir.display(), "strom is ready");
    let handlers = Arc::new(pg::handler::Handlers::new(
        Arc::clone(&db),
        Arc::clone(&stream),
    ));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = Arc::clone(&handlers);
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            warn!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => error!(error = %e, "accept failed"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("shutting down");
    if let Some(path) = &config.ready_file {
        // No longer listening: a harness must not take the address for a new start's.
        let _ = std::fs::remove_file(path);
    }
    if let Err(e) = db.flush() {
        error!(error = %e, "flush on shutdown failed");
    }
    Ok(())
}

/// Writes the bound address to `path` whole: to a temporary file, then renamed, so a reader
/// polling for `path` never sees it half written.
fn write_ready_file(path: &std::path::Path, bound: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{bound}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| anyhow::anyhow!("cannot write ready file {}: {e}", path.display()))
}
