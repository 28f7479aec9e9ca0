//! Durability: committed rows and tables survive a clean restart and `kill -9`.

use crate::server::TestServer;

async fn contents(server: &TestServer) -> Vec<(i64, String)> {
    let c = server.client().await;
    c.query("SELECT id, feeder FROM meter ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_survive_restart_and_sigkill() {
    let mut server = TestServer::start();
    {
        let c = server.client().await;
        c.batch_execute(
            "CREATE SCHEMA grid; CREATE TABLE meter (id BIGINT PRIMARY KEY, feeder VARCHAR NOT NULL DEFAULT 'F0');
             CREATE TABLE grid.log (msg TEXT);
             INSERT INTO meter VALUES (1, 'F1'), (2, 'F2'); INSERT INTO meter (id) VALUES (3);
             INSERT INTO grid.log VALUES ('a'), ('a');",
        )
        .await
        .unwrap();
    }
    let expected = vec![
        (1, "F1".to_string()),
        (2, "F2".to_string()),
        (3, "F0".to_string()),
    ];
    server.restart();
    assert_eq!(contents(&server).await, expected);

    // Every statement acknowledged before SIGKILL must be there afterwards.
    {
        let c = server.client().await;
        for i in 4..200i64 {
            c.execute(
                "INSERT INTO meter VALUES ($1, $2)",
                &[&i, &format!("F{}", i % 7)],
            )
            .await
            .unwrap();
        }
        c.execute("DELETE FROM meter WHERE id = 2", &[])
            .await
            .unwrap();
        c.execute("UPDATE meter SET feeder = 'moved' WHERE id = 3", &[])
            .await
            .unwrap();
    }
    server.kill();
    server.spawn();
    let rows = contents(&server).await;
    assert_eq!(rows.len(), 198);
    assert_eq!(rows[0], (1, "F1".to_string()));
    assert_eq!(rows[1], (3, "moved".to_string()));
    let c = server.client().await;
    // Tables without a primary key keep their duplicate rows and their row ids keep growing.
    let n: i64 = c
        .query_one("SELECT count(*) FROM grid.log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    c.execute("INSERT INTO grid.log VALUES ('b')", &[])
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM grid.log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "a row id was reused after restart");
    // The default survives too.
    c.execute("INSERT INTO meter (id) VALUES (1000)", &[])
        .await
        .unwrap();
    let f: String = c
        .query_one("SELECT feeder FROM meter WHERE id = 1000", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(f, "F0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_same_data_dir_fails_cleanly() {
    let server = TestServer::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open data directory"), "{stderr}");
    // and the first server is unharmed
    let c = server.client().await;
    assert_eq!(
        c.query_one("SELECT 1::BIGINT", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
}

/// A processing-time temporal join keeps being one after a restart (its stored query no
/// longer carries `FOR SYSTEM_TIME AS OF PROCTIME()`; the view records it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_joins_stay_temporal_across_restart() {
    let mut server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(
        "CREATE TABLE dim (k INT PRIMARY KEY, name VARCHAR, code VARCHAR);
         CREATE TABLE facts (k INT, seq INT, code VARCHAR);
         INSERT INTO dim VALUES (1, 'before', 'x');
         CREATE INDEX dim_code ON dim (code);
         CREATE MATERIALIZED VIEW enriched AS SELECT f.seq, d.name FROM facts f JOIN dim FOR SYSTEM_TIME AS OF PROCTIME() AS d ON f.k = d.k;
         CREATE MATERIALIZED VIEW by_code AS SELECT f.seq, d.k FROM facts f JOIN dim FOR SYSTEM_TIME AS OF PROCTIME() AS d ON f.code = d.code;
         INSERT INTO facts VALUES (1, 1, 'x');",
    )
    .await
    .unwrap();
    drop(c);
    server.kill();
    server.spawn();
    let c = server.client().await;
    // The index survives, is still maintained, and the view still looks rows up by it.
    c.batch_execute(
        "UPDATE dim SET name = 'after', code = 'y' WHERE k = 1; INSERT INTO dim VALUES (2, 'two', 'x');
         INSERT INTO facts VALUES (1, 2, 'x'), (1, 3, 'y');",
    )
    .await
    .unwrap();
    let rows: Vec<(i32, String)> = c
        .query("SELECT seq, name FROM enriched ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "before".to_string()),
            (2, "after".to_string()),
            (3, "after".to_string())
        ]
    );
    let rows: Vec<(i32, i32)> = c
        .query("SELECT seq, k FROM by_code ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(1, 1), (2, 2), (3, 1)]);
    let err = c.batch_execute("DROP INDEX dim_code").await.unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "2BP01");
    // The view needs the dimension; the detail names it (not the view's first input).
    let err = c.batch_execute("DROP TABLE dim").await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "2BP01");
    assert!(
        db.detail()
            .is_some_and(|d| d.contains("materialized view enriched depends on table dim")),
        "{db:?}"
    );
}
