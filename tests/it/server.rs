//! Starting and stopping a real `strom` server for a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestServer {
    /// The port the server listens on: chosen by the kernel at every start (the server
    /// binds port 0 and reports the port in its ready file), so a restart may change it;
    /// connect through [`TestServer::client`] or read it again after one.
    pub port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl TestServer {
    /// A server on a fresh data directory.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// A server on a fresh data directory, with extra command-line flags.
    pub fn start_with(args: &[&str]) -> TestServer {
        Self::start_with_env(args, &[])
    }

    /// A server on a fresh data directory, with extra flags and environment variables
    /// (kept across restarts).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        let tmp = tempfile::tempdir().expect("create temp dir");
        let data_dir = tmp.path().join("data");
        let mut s = TestServer {
            port: 0,
            data_dir,
            child: None,
            _tmp: Some(tmp),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        // Next to the data directory, not in it: a test may delete or inspect that.
        let ready = self.data_dir.with_file_name("ready");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(env!("CARGO_BIN_EXE_strom"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ready-file")
            .arg(&ready)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("STROM_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn strom");
        self.child = Some(child);
        self.port = wait_until_ready(&ready, self.child.as_mut().unwrap());
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "strom exited with {status} on SIGTERM");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "strom did not stop within 20 s of SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the server with SIGKILL: no flush, no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL strom");
            child.wait().expect("reap strom");
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn conn_str(&self) -> String {
        format!("host=127.0.0.1 port={} user=root dbname=dev", self.port)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                let pid = self.child.as_ref().map(Child::id);
                panic!(
                    "connect to strom on port {} (server pid {pid:?}, {}): {e:?}",
                    self.port,
                    process_state(pid)
                )
            });
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    #[allow(dead_code)]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the server to write its ready file (it does once it listens) and returns the
/// port in it. The server binds the port itself (0 at the first start: the kernel picks a
/// free one), so no other process can take it between a probe and the bind.
fn wait_until_ready(ready: &Path, child: &mut Child) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            let addr: std::net::SocketAddr = text
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("ready file {}: {text:?}: {e}", ready.display()));
            return addr.port();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("strom exited during startup with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "strom did not report listening within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// "running", "exited" (a zombie not yet reaped) or "gone", from `/proc`, for messages.
fn process_state(pid: Option<u32>) -> &'static str {
    let Some(pid) = pid else { return "not started" };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
        {
            Some("Z") | Some("X") => "exited",
            _ => "running",
        },
        Err(_) => "gone",
    }
}

/// A client of the reference PostgreSQL the differential and fidelity tests compare
/// against (`TEST_PG_URL`, started by `scripts/test.sh`).
pub async fn reference_pg() -> tokio_postgres::Client {
    let url = std::env::var("TEST_PG_URL").expect(
        "TEST_PG_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL",
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the reference PostgreSQL");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// The server's message in an error it returned (empty for another kind of error).
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

/// The rows of `sql` over the simple protocol, as text (`None`: NULL); panics on error.
pub async fn text_rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}
