//! Shared by the benchmarks that drive a release `strom` server over the PostgreSQL
//! protocol.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// A release `strom` server on a free port with a fresh data directory; killed when
/// dropped.
pub struct BenchServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    pub fn start() -> BenchServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("STROM_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn strom");
        BenchServer {
            port,
            child,
            _dir: dir,
        }
    }
}

impl BenchServer {
    /// The server's process id (for its CPU time and memory in `/proc`).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to the server on `port`, waiting up to 10 s for it to start.
pub async fn connect(port: u16) -> Client {
    for _ in 0..200 {
        if let Ok((c, conn)) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=root dbname=dev"),
            NoTls,
        )
        .await
        {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("strom did not start");
}
