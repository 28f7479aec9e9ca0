//! Shared by the benchmarks that drive a release `strom` server over the PostgreSQL
//! protocol.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

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
