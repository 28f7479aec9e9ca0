//! Strom's integration tests: one binary (linking is the expensive part of a test build).
//!
//! Every test starts its own `strom` server process ([`server::TestServer`]) on a free
//! port with a fresh data directory, and talks to it over the PostgreSQL protocol with real
//! clients: tokio-postgres, a small hand-written extended-protocol client
//! ([`pgclient`]), and the real `psql`.

mod event_time;
mod fidelity;
mod files;
mod grid_files;
mod kafka;
mod kafka_txn;
mod lookup;
mod nexmark;
mod pgclient;
mod psql;
mod recovery;
mod server;
mod slt;
mod streaming;
mod wire;
