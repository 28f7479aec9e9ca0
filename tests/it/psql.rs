//! The README session, driven through the real `psql` (Debian's postgresql-client).

use std::process::Command;

use crate::server::TestServer;

/// Runs psql with `args`, unaligned output, stopping on the first error.
fn psql(server: &TestServer, script: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-U",
            "root",
            "-X",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "dev",
        ])
        .arg("-c")
        .arg(script)
        .output()
        .expect("run psql (install postgresql-client)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "psql failed on {script:?}:\n{stderr}\n{stdout}"
    );
    assert!(
        !stderr.contains("ERROR"),
        "psql reported an error on {script:?}:\n{stderr}"
    );
    stdout
}

#[test]
fn readme_session_in_psql_survives_restart_and_kill() {
    let mut server = TestServer::start();
    psql(&server, "CREATE TABLE meter (id BIGINT PRIMARY KEY, feeder VARCHAR, kw DOUBLE PRECISION, ts TIMESTAMPTZ)");
    let out = psql(
        &server,
        "INSERT INTO meter VALUES (1,'F1',12.5,now()), (2,'F1',3.0,now()), (3,'F2',7.25,now())",
    );
    assert!(out.contains("INSERT 0 3"), "{out}");
    assert!(psql(&server, "UPDATE meter SET kw = kw * 2 WHERE feeder = 'F2'").contains("UPDATE 1"));
    assert!(psql(&server, "DELETE FROM meter WHERE id = 2").contains("DELETE 1"));
    let expected_sum = "feeder|sum|count\nF1|12.5|1\nF2|14.5|1\n(2 rows)";
    let q = "SELECT feeder, sum(kw), count(*) FROM meter GROUP BY feeder ORDER BY 1";
    assert!(
        psql(&server, q).contains(expected_sum),
        "{}",
        psql(&server, q)
    );

    let dt = psql(&server, "\\dt");
    assert!(
        dt.contains("public|meter|table|root"),
        "\\dt printed:\n{dt}"
    );
    let d = psql(&server, "\\d meter");
    for line in [
        "Table \"public.meter\"",
        "id|bigint||not null|",
        "feeder|character varying|||",
        "kw|double precision|||",
        "ts|timestamp with time zone|||",
        "\"meter_pkey\" PRIMARY KEY, btree (id)",
    ] {
        assert!(d.contains(line), "\\d meter lacks {line:?}:\n{d}");
    }
    let l = psql(&server, "\\l");
    assert!(l.contains("dev|root|UTF8"), "\\l printed:\n{l}");
    let dn = psql(&server, "\\dn");
    assert!(dn.contains("public|root"), "\\dn printed:\n{dn}");
    // The verbose and other common meta-commands run without errors and show the table.
    let d_plus = psql(&server, "\\d+ meter");
    assert!(
        d_plus.contains("feeder|character varying||||extended|||"),
        "\\d+ meter printed:\n{d_plus}"
    );
    assert!(psql(&server, "\\dt+").contains("public|meter|table|root|permanent|heap|"));
    assert!(psql(&server, "\\di").contains("public|meter_pkey|index|root|meter"));
    assert!(psql(&server, "\\du").contains("root|Superuser"));
    assert!(psql(&server, "\\d").contains("public|meter|table|root"));

    server.restart();
    assert!(psql(&server, q).contains(expected_sum));
    psql(&server, "INSERT INTO meter VALUES (4,'F3',1,now())");
    server.kill();
    server.spawn();
    let out = psql(&server, "SELECT id FROM meter ORDER BY id");
    assert!(out.contains("id\n1\n3\n4\n(3 rows)"), "{out}");
    assert!(psql(&server, "\\d meter").contains("\"meter_pkey\" PRIMARY KEY, btree (id)"));
}
