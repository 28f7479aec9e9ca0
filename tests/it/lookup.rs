//! External lookup tables against the real PostgreSQL (`TEST_PG_URL`) and MariaDB
//! (`TEST_MYSQL_URL`) that `scripts/test.sh` starts: hits, misses, NULL keys, cache expiry,
//! `SELECT` through to the database, retractions, and the database going away and coming
//! back mid-stream (and Strom killed meanwhile) without losing, duplicating or reordering
//! rows.
//!
//! Strom reaches each database through [`Proxy`], a TCP forwarder the test can cut: a
//! real database behind a real network fault (connections reset, new ones refused), since
//! stopping the shared database would disturb the other tests running alongside.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::server::{text_rows, TestServer};

/// A TCP forwarder to `target` that can be taken down (every open connection is cut and
/// new ones are closed at once) and brought back.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, links2) = (Arc::clone(&up), Arc::clone(&links));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Proxy { port, up, links }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Db {
    Postgres,
    Mysql,
}

/// Runs SQL on the database behind the lookup table.
enum Admin {
    Pg(tokio_postgres::Client),
    My(mysql_async::Conn),
}

impl Admin {
    async fn connect(db: Db) -> (Admin, String, String) {
        match db {
            Db::Postgres => {
                let url = std::env::var("TEST_PG_URL").expect(
                    "TEST_PG_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL",
                );
                let c = crate::server::reference_pg().await;
                let cfg: tokio_postgres::Config = url.parse().unwrap();
                let host = match &cfg.get_hosts()[0] {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    other => panic!("TEST_PG_URL host {other:?}"),
                };
                let target = format!("{host}:{}", cfg.get_ports()[0]);
                let options = format!(
                    "connector = 'postgres', username = '{}', database.name = '{}'",
                    cfg.get_user().unwrap(),
                    cfg.get_dbname().unwrap_or("postgres")
                );
                (Admin::Pg(c), target, options)
            }
            Db::Mysql => {
                let url = std::env::var("TEST_MYSQL_URL").expect(
                    "TEST_MYSQL_URL is not set: run the suite with scripts/test.sh, which starts MariaDB",
                );
                let opts = mysql_async::Opts::from_url(&url).unwrap();
                let target = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
                let options = format!(
                    "connector = 'mysql', username = '{}', password = '{}', database.name = '{}'",
                    opts.user().unwrap(),
                    opts.pass().unwrap_or(""),
                    opts.db_name().unwrap()
                );
                let c = mysql_async::Conn::new(opts).await.unwrap();
                (Admin::My(c), target, options)
            }
        }
    }

    async fn run(&mut self, sql: &str) {
        match self {
            Admin::Pg(c) => c.batch_execute(sql).await.unwrap(),
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                c.query_drop(sql).await.unwrap()
            }
        }
    }
}

/// Polls `sql` until it returns `want` (as text rows), or panics after `secs`.
async fn wait_rows(c: &tokio_postgres::Client, sql: &str, want: &[&[Option<&str>]], secs: u64) {
    let want: Vec<Vec<Option<String>>> = want
        .iter()
        .map(|r| r.iter().map(|v| v.map(str::to_string)).collect())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = text_rows(c, sql).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scenario(db: Db) {
    let (mut admin, target, options) = Admin::connect(db).await;
    let table = format!("lk_customer_{}_{:?}", std::process::id(), db).to_lowercase();
    let extra: Vec<String> = (0..300)
        .map(|i| format!("('x{i}', 'X{i}', {i}, {}, 'z{}')", i % 7, i % 3))
        .collect();
    admin
        .run(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id VARCHAR(20) PRIMARY KEY, name VARCHAR(40), tariff INT, region INT, zone VARCHAR(10));
             INSERT INTO {table} VALUES ('c1', 'Alice', 1, 1, 'n'), ('c2', 'Bob', 2, 1, 'n'), ('c3', NULL, 3, 2, 's'), {}",
            extra.join(", ")
        ))
        .await;
    let proxy = Proxy::start(target).await;
    let mut server = TestServer::start();
    let c = server.client().await;
    // Batches of 16 keys: 300 keys take 19 queries, run 4 at a time.
    c.batch_execute(&format!(
        "CREATE TABLE customer (id VARCHAR PRIMARY KEY, name VARCHAR, tariff INT, region INT, zone VARCHAR)
         WITH ({options}, mode = 'lookup', hostname = '127.0.0.1', port = '{}', table.name = '{table}',
               lookup.cache = 'PARTIAL', lookup.partial-cache.max-rows = '1000',
               lookup.partial-cache.expire-after-write = '5s', lookup.max-retries = '1',
               lookup.batch-size = '16');
         CREATE TABLE readings (seq INT PRIMARY KEY, id VARCHAR, kw DOUBLE PRECISION);
         CREATE MATERIALIZED VIEW enriched AS
           SELECT r.seq, r.id, r.kw, c.name, c.tariff, c.id IS NULL AS unknown
           FROM readings r LEFT JOIN customer FOR SYSTEM_TIME AS OF PROCTIME() AS c ON r.id = c.id;
         CREATE MATERIALIZED VIEW known AS
           SELECT r.seq, c.name FROM readings r JOIN customer FOR SYSTEM_TIME AS OF PROCTIME() AS c ON r.id = c.id;
         CREATE MATERIALIZED VIEW plain AS SELECT count(*) AS n FROM readings;
         CREATE TABLE areas (n INT, region BIGINT, zone VARCHAR);
         CREATE MATERIALIZED VIEW by_area AS
           SELECT a.n, c.id FROM areas a JOIN customer FOR SYSTEM_TIME AS OF PROCTIME() AS c ON c.zone = a.zone AND a.region = c.region;",
        proxy.port
    ))
    .await
    .unwrap();
    let explain = text_rows(
        &c,
        "EXPLAIN CREATE MATERIALIZED VIEW x AS SELECT r.seq, c.name FROM readings r JOIN customer FOR SYSTEM_TIME AS OF PROCTIME() AS c ON r.id = c.id",
    )
    .await;
    let lookup = if db == Db::Postgres {
        "postgres"
    } else {
        "mysql"
    };
    assert!(
        explain
            .iter()
            .flatten()
            .flatten()
            .any(|l| l.contains(&format!(
                "LookupJoin inner dim=customer key=[id] via {lookup} lookup"
            ))),
        "{explain:?}"
    );

    // SELECT reads through to the database.
    assert_eq!(
        text_rows(
            &c,
            "SELECT id, name, tariff FROM customer WHERE id LIKE 'c%' ORDER BY id"
        )
        .await,
        vec![
            vec![Some("c1".into()), Some("Alice".into()), Some("1".into())],
            vec![Some("c2".into()), Some("Bob".into()), Some("2".into())],
            vec![Some("c3".into()), None, Some("3".into())],
        ]
    );
    assert_eq!(
        text_rows(&c, "SELECT count(*) FROM customer").await,
        vec![vec![Some("303".into())]]
    );

    // Hits, a miss, a NULL key, a dimension row with a NULL column.
    let t0 = Instant::now();
    c.batch_execute(
        "INSERT INTO readings VALUES (1, 'c1', 1.0), (2, 'c2', 2.0), (3, 'c9', 3.0), (4, NULL, 4.0), (5, 'c3', 5.0), (6, 'c1', 6.0)",
    )
    .await
    .unwrap();
    let q = "SELECT seq, id, name, tariff, unknown FROM enriched ORDER BY seq";
    wait_rows(
        &c,
        q,
        &[
            &[Some("1"), Some("c1"), Some("Alice"), Some("1"), Some("f")],
            &[Some("2"), Some("c2"), Some("Bob"), Some("2"), Some("f")],
            &[Some("3"), Some("c9"), None, None, Some("t")],
            &[Some("4"), None, None, None, Some("t")],
            &[Some("5"), Some("c3"), None, Some("3"), Some("f")],
            &[Some("6"), Some("c1"), Some("Alice"), Some("1"), Some("f")],
        ],
        10,
    )
    .await;
    wait_rows(
        &c,
        "SELECT seq, name FROM known ORDER BY seq",
        &[
            &[Some("1"), Some("Alice")],
            &[Some("2"), Some("Bob")],
            &[Some("5"), None],
            &[Some("6"), Some("Alice")],
        ],
        10,
    )
    .await;

    // The database changes: cached keys (found and missing) keep their old answer until
    // the entry expires 5 s after it was written.
    admin
        .run(&format!(
            "UPDATE {table} SET name = 'Alice2' WHERE id = 'c1'; INSERT INTO {table} VALUES ('c9', 'Nina', 9, 9, 'w')"
        ))
        .await;
    c.batch_execute("INSERT INTO readings VALUES (7, 'c1', 7.0), (8, 'c9', 8.0)")
        .await
        .unwrap();
    let after = "SELECT seq, name FROM enriched WHERE seq >= 7 ORDER BY seq";
    let cached = text_rows(&c, after).await;
    if t0.elapsed() < Duration::from_millis(4900) {
        assert_eq!(
            cached,
            vec![
                vec![Some("7".into()), Some("Alice".into())],
                vec![Some("8".into()), None]
            ],
            "served from the cache"
        );
    } else {
        eprintln!(
            "machine too slow to check the cache before expiry: {:?}",
            t0.elapsed()
        );
    }
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(t0.elapsed()) + Duration::from_millis(200),
    )
    .await;
    c.batch_execute("INSERT INTO readings VALUES (9, 'c1', 9.0), (10, 'c9', 10.0)")
        .await
        .unwrap();
    wait_rows(
        &c,
        "SELECT seq, name FROM enriched WHERE seq >= 9 ORDER BY seq",
        &[&[Some("9"), Some("Alice2")], &[Some("10"), Some("Nina")]],
        10,
    )
    .await;
    let stats = text_rows(
        &c,
        "SELECT hits, misses, errors FROM strom_catalog.lookup_status WHERE view_name = 'enriched'",
    )
    .await;
    // Misses: c1, c2, c9, c3 (first batch), then c1, c9 again after expiry; hits: the
    // second c1 of the first batch and c1, c9 of the second.
    assert_eq!(
        stats,
        vec![vec![Some("3".into()), Some("6".into()), Some("0".into())]]
    );

    // Many keys at once (several concurrent batches), and a composite key of an integer
    // and a text column with several dimension rows per key.
    c.batch_execute(
        "INSERT INTO readings SELECT 1000 + i, 'x' || i, i FROM generate_series(0, 299) AS g(i);
         INSERT INTO areas VALUES (1, 1, 'n'), (2, 3, 'z0'), (3, 2, 'nope');",
    )
    .await
    .unwrap();
    wait_rows(
        &c,
        "SELECT count(*), count(DISTINCT name), min(name), sum(tariff) FROM enriched WHERE seq >= 1000",
        &[&[Some("300"), Some("300"), Some("X0"), Some("44850")]],
        20,
    )
    .await;
    // Region 3, zone z0: i % 7 = 3 and i % 3 = 0, i < 300: i = 3, 24, ..., 297 (15 rows).
    wait_rows(
        &c,
        "SELECT n, count(*) FROM by_area GROUP BY n ORDER BY n",
        &[&[Some("1"), Some("2")], &[Some("2"), Some("15")]],
        10,
    )
    .await;

    // A retraction removes exactly what was emitted, not what the dimension says now.
    c.batch_execute("DELETE FROM readings WHERE seq = 1")
        .await
        .unwrap();
    wait_rows(
        &c,
        "SELECT seq, name FROM enriched WHERE seq <= 2 ORDER BY seq",
        &[&[Some("2"), Some("Bob")]],
        10,
    )
    .await;

    // The database goes away mid-stream: rows wait (in order, with a delete and an
    // update among them) while other views carry on, Strom is killed meanwhile, and
    // everything arrives once the database is back.
    proxy.down();
    c.batch_execute(
        "INSERT INTO readings SELECT 100 + i, 'c2', i FROM generate_series(0, 49) AS g(i);
         DELETE FROM readings WHERE seq = 100;
         UPDATE readings SET id = 'c3' WHERE seq = 101;",
    )
    .await
    .unwrap();
    let waiting = "SELECT waiting > 0, errors > 0, last_error IS NOT NULL FROM strom_catalog.lookup_status WHERE view_name = 'enriched'";
    wait_rows(&c, waiting, &[&[Some("t"), Some("t"), Some("t")]], 20).await;
    assert_eq!(
        text_rows(
            &c,
            "SELECT count(*) FROM enriched WHERE seq >= 100 AND seq < 1000"
        )
        .await,
        vec![vec![Some("0".into())]],
        "nothing is emitted while the database is away"
    );
    // Rows 2..10, 300 more, and 49 of the last 50.
    wait_rows(&c, "SELECT n FROM plain", &[&[Some("358")]], 10).await;
    drop(c);
    server.kill();
    server.spawn();
    let c = server.client().await;
    c.batch_execute("INSERT INTO readings VALUES (200, 'c2', 200.0)")
        .await
        .unwrap();
    // The waiting rows were reloaded from the committed state.
    wait_rows(
        &c,
        "SELECT waiting >= 50 FROM strom_catalog.lookup_status WHERE view_name = 'enriched'",
        &[&[Some("t")]],
        20,
    )
    .await;
    wait_rows(&c, "SELECT n FROM plain", &[&[Some("359")]], 10).await;
    assert_eq!(
        text_rows(
            &c,
            "SELECT count(*) FROM enriched WHERE seq >= 100 AND seq < 1000"
        )
        .await,
        vec![vec![Some("0".into())]]
    );
    proxy.up();
    let all = "SELECT count(*), count(DISTINCT seq), min(seq), max(seq), sum(CASE WHEN name = 'Bob' THEN 1 ELSE 0 END) FROM enriched WHERE seq >= 100 AND seq < 1000";
    // 101..149 (49 rows, 101 moved to c3, whose name is NULL) and 200.
    wait_rows(
        &c,
        all,
        &[&[Some("50"), Some("50"), Some("101"), Some("200"), Some("49")]],
        30,
    )
    .await;
    assert_eq!(
        text_rows(&c, "SELECT id, tariff FROM enriched WHERE seq = 101").await,
        vec![vec![Some("c3".into()), Some("3".into())]]
    );
    wait_rows(
        &c,
        "SELECT waiting, last_error FROM strom_catalog.lookup_status WHERE view_name = 'enriched'",
        &[&[Some("0"), None]],
        10,
    )
    .await;
    // One enriched row per reading (a LEFT JOIN), none lost or doubled.
    assert_eq!(
        text_rows(&c, "SELECT count(*) FROM enriched").await,
        text_rows(&c, "SELECT count(*) FROM readings").await
    );
    admin.run(&format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lookup_table() {
    scenario(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_lookup_table() {
    scenario(Db::Mysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_table_declarations_are_checked() {
    let (mut admin, target, options) = Admin::connect(Db::Postgres).await;
    let server = TestServer::start();
    let c = server.client().await;
    let (host, port) = target.split_once(':').unwrap();
    let err = |sql: String| {
        let c = &c;
        async move {
            c.batch_execute(&sql)
                .await
                .expect_err(&sql)
                .as_db_error()
                .map(|e| e.message().to_string())
                .unwrap()
        }
    };
    let base = format!("{options}, hostname = '{host}', port = '{port}'");
    let e = err(format!(
        "CREATE TABLE d (k INT PRIMARY KEY) WITH ({base}, mode = 'lookup', table.name = 'no_such_table_here')"
    ))
    .await;
    assert!(
        e.contains("the external database cannot read it") && e.contains("no_such_table_here"),
        "{e}"
    );
    let e = err(format!(
        "CREATE TABLE d (k INT PRIMARY KEY) WITH ({base}, table.name = 't')"
    ))
    .await;
    assert!(e.contains("needs mode = 'lookup'"), "{e}");
    let e = err(format!(
        "CREATE TABLE d (k INT PRIMARY KEY) WITH ({base}, mode = 'lookup', table.name = 't', lookup.cache = 'FULL')"
    ))
    .await;
    assert!(e.contains("lookup.cache = 'FULL' is not supported"), "{e}");
    let e = err(format!(
        "CREATE TABLE d (k INT PRIMARY KEY) WITH ({base}, mode = 'lookup', table.name = 't', lookup.partial-cache.max-rows = '10')"
    ))
    .await;
    assert!(e.contains("needs lookup.cache = 'PARTIAL'"), "{e}");
    let e = err(format!(
        "CREATE TABLE d (k INT PRIMARY KEY) WITH ({base}, mode = 'lookup', table.name = 't', lookup.bogus = '1')"
    ))
    .await;
    assert!(e.contains("unknown option \"lookup.bogus\""), "{e}");
    // A database that cannot be reached does not stop the declaration (rows wait).
    let table = format!("lk_decl_{}", std::process::id());
    admin
        .run(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k INT PRIMARY KEY, v TEXT)"
        ))
        .await;
    c.batch_execute(&format!(
        "CREATE TABLE d (k INT PRIMARY KEY, v VARCHAR) WITH ({options}, hostname = '127.0.0.1', port = '1', mode = 'lookup', table.name = '{table}');
         CREATE TABLE ok (k INT PRIMARY KEY, v VARCHAR) WITH ({base}, mode = 'lookup', table.name = '{table}');
         CREATE TABLE s (k INT);"
    ))
    .await
    .unwrap();
    let e = err("INSERT INTO ok VALUES (1, 'x')".into()).await;
    assert!(e.contains("cannot change lookup table \"ok\""), "{e}");
    let e =
        err("CREATE MATERIALIZED VIEW v AS SELECT s.k, ok.v FROM s JOIN ok ON s.k = ok.k".into())
            .await;
    assert!(
        e.contains("only as the dimension of a temporal join"),
        "{e}"
    );
    let e = err("SELECT * FROM d".into()).await;
    assert!(
        e.contains("lookup table \"d\": reading it from the database failed"),
        "{e}"
    );
    admin.run(&format!("DROP TABLE {table}")).await;
}
