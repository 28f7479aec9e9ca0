//! Protocol-level behaviour through tokio-postgres: binary results, typed parameters,
//! command tags, SQLSTATEs, and connections that survive errors.

use crate::server::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_and_parameters_round_trip() {
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(
        "CREATE TABLE w (id BIGINT PRIMARY KEY, name VARCHAR, kw DOUBLE PRECISION, n INT, s SMALLINT, ok BOOLEAN,
                          r REAL, d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, b BYTEA, j JSONB, a BIGINT[])",
    )
    .await
    .unwrap();
    let ts = chrono::NaiveDate::from_ymd_opt(2025, 3, 13)
        .unwrap()
        .and_hms_micro_opt(17, 5, 0, 500_000)
        .unwrap();
    let tz = chrono::DateTime::parse_from_rfc3339("2025-03-13T17:05:00+08:00")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let json = serde_json::json!({"b": [1, 2], "a": null});
    let n = c
        .execute(
            "INSERT INTO w VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            &[
                &7i64,
                &"F1",
                &12.5f64,
                &-3i32,
                &4i16,
                &true,
                &1.5f32,
                &ts.date(),
                &ts,
                &tz,
                &vec![0u8, 255],
                &json,
                &vec![Some(1i64), None],
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let row = c
        .query_one("SELECT * FROM w WHERE id = $1", &[&7i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>("id"), 7);
    assert_eq!(row.get::<_, &str>("name"), "F1");
    assert_eq!(row.get::<_, f64>("kw"), 12.5);
    assert_eq!(row.get::<_, i32>("n"), -3);
    assert_eq!(row.get::<_, i16>("s"), 4);
    assert!(row.get::<_, bool>("ok"));
    assert_eq!(row.get::<_, f32>("r"), 1.5);
    assert_eq!(row.get::<_, chrono::NaiveDate>("d"), ts.date());
    assert_eq!(row.get::<_, chrono::NaiveDateTime>("ts"), ts);
    assert_eq!(row.get::<_, chrono::DateTime<chrono::Utc>>("tz"), tz);
    assert_eq!(row.get::<_, Vec<u8>>("b"), vec![0u8, 255]);
    let j: Result<serde_json::Value, _> = row.try_get("j");
    assert_eq!(j.map_err(|e| format!("{e:?}")).unwrap(), json);
    assert_eq!(row.get::<_, Vec<Option<i64>>>("a"), vec![Some(1), None]);

    // The column types the server describes are PostgreSQL's.
    let stmt = c
        .prepare("SELECT id, name, kw, tz, j FROM w")
        .await
        .unwrap();
    let types: Vec<&str> = stmt.columns().iter().map(|c| c.type_().name()).collect();
    assert_eq!(types, ["int8", "varchar", "float8", "timestamptz", "jsonb"]);
    // Parameter types are inferred from the context.
    let stmt = c
        .prepare("SELECT name FROM w WHERE kw > $1 AND id = $2")
        .await
        .unwrap();
    let params: Vec<&str> = stmt.params().iter().map(|t| t.name()).collect();
    assert_eq!(params, ["float8", "int8"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tags_errors_and_surviving_connections() {
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute("CREATE TABLE meter (id BIGINT PRIMARY KEY, feeder VARCHAR, kw DOUBLE PRECISION, ts TIMESTAMPTZ)")
        .await
        .unwrap();
    let n = c
        .execute(
            "INSERT INTO meter VALUES (1,'F1',12.5,now()), (2,'F1',3.0,now()), (3,'F2',7.25,now())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        c.execute("UPDATE meter SET kw = kw * 2 WHERE feeder = 'F2'", &[])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        c.execute("DELETE FROM meter WHERE id = 2", &[])
            .await
            .unwrap(),
        1
    );
    let rows = c
        .query(
            "SELECT feeder, sum(kw), count(*) FROM meter GROUP BY feeder ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, f64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, vec![("F1".into(), 12.5, 1), ("F2".into(), 14.5, 1)]);

    for (sql, code) in [
        ("INSERT INTO meter VALUES (1, 'dup', 0, now())", "23505"),
        ("SELEC 1", "42601"),
        ("SELECT * FROM nope", "42P01"),
        ("SELECT nope FROM meter", "42703"),
        ("SELECT 1/0", "22012"),
        ("INSERT INTO meter (id) VALUES (NULL)", "23502"),
    ] {
        let err = c.simple_query(sql).await.expect_err(sql);
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), code, "{sql}: {}", db.message());
        // the connection is still usable
        let n: i64 = c
            .query_one("SELECT count(*) FROM meter", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2, "after {sql}");
    }
    // A failing statement in a multi-statement simple query stops the rest and undoes nothing before it.
    let err = c.batch_execute("INSERT INTO meter VALUES (10,'F3',1,now()); INSERT INTO meter VALUES (1,'x',1,now()); INSERT INTO meter VALUES (11,'F3',1,now())").await;
    assert!(err.is_err());
    let ids: Vec<i64> = c
        .query("SELECT id FROM meter ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 3, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_predicates_use_point_and_range_reads() {
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute("CREATE TABLE pk (id BIGINT PRIMARY KEY, v INT); INSERT INTO pk SELECT i, i * 10 FROM generate_series(1, 2000) AS g(i)")
        .await
        .unwrap();
    let explain = |sql: &'static str| {
        let c = &c;
        async move {
            let rows = c.simple_query(&format!("EXPLAIN {sql}")).await.unwrap();
            rows.iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    assert!(explain("SELECT * FROM pk WHERE id = 5")
        .await
        .contains("point_get keys=1"));
    assert!(explain("SELECT * FROM pk WHERE id IN (1, 3)")
        .await
        .contains("point_get keys=2"));
    assert!(explain("SELECT * FROM pk WHERE id BETWEEN 10 AND 20")
        .await
        .contains("range_scan"));
    assert!(explain("SELECT * FROM pk WHERE v = 5")
        .await
        .contains("full_scan"));
    let v: i32 = c
        .query_one("SELECT v FROM pk WHERE id = 1234", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 12340);
    let n: i64 = c
        .query_one("SELECT count(*) FROM pk WHERE id >= 100 AND id < 200", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    let n: i64 = c
        .query_one("SELECT count(*) FROM pk WHERE id > $1", &[&1990i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
}
