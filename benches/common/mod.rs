//! Shared by the benchmarks that drive a release `strom` server over the PostgreSQL
//! protocol.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// A release `strom` server on a port the kernel picks (reported in its ready file) with a
/// fresh data directory; killed when dropped.
pub struct BenchServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    pub fn start() -> BenchServer {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("STROM_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn strom");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let addr: std::net::SocketAddr = text.trim().parse().expect("ready file");
                break addr.port();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("strom exited during startup with {status}");
            }
            assert!(std::time::Instant::now() < deadline, "strom did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
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
