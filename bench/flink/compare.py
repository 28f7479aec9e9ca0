#!/usr/bin/env python3
"""Same-run comparison of Strom and Apache Flink on one bid CSV file.

    bench/flink/compare.py [--rows 5000000] [--rounds 3] [--queries q0,q1,q2,agg,tumble,tumble_close]
                           [--out docs/flink-comparison.md] [--by-reference]

Run it with a Python that has PyFlink (`pip install apache-flink` in a virtualenv; JDK 17
on PATH) and from the repository root; it builds nothing itself, so run
`cargo bench --bench nexmark --no-run` first (the Strom side is that harness with
`STROM_NEXMARK_CSV`).

1. Writes a Nexmark-shaped bid CSV (`--rows` rows, no header) once, into
   `$STROM_BENCH_DIR` (default ~/.cache/strom/flink-bench), reused while the row count
   is the same.
2. For each round, for each query: runs it in Strom (a fresh release server, a
   `posix_fs` source over the file, a blackhole sink) and then in Flink (a fresh
   mini-cluster in streaming mode, the filesystem/csv source, a blackhole sink), so the
   two alternate and share the machine's state.
3. Reports per query the median events/s and events per CPU-second of each, and the
   ratios Strom / Flink.

Both clocks run from submitting the query until every row has been processed; CPU is the
server's (Strom) or the JVM's (Flink) user + system time over the same span. Flink's
parallelism is 2 (this machine's cores); one CSV file is read by one source task in both.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

# name: (Strom SQL, Flink SQL). Both read a relation `bid`.
QUERIES = {
    "q0": (
        "SELECT auction, bidder, price, date_time FROM bid",
        "SELECT auction, bidder, price, date_time FROM bid",
    ),
    "q1": (
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
    ),
    "q2": (
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
        "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    ),
    # A keyed aggregate (updating result).
    "agg": (
        "SELECT auction, count(*) AS n, max(price) AS top FROM bid GROUP BY auction",
        "SELECT auction, COUNT(*) AS n, MAX(price) AS top FROM bid GROUP BY auction",
    ),
    # A tumbling-window count per auction, on event time.
    "tumble": (
        "SELECT auction, window_start, count(*) AS n FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) "
        "GROUP BY auction, window_start, window_end",
        "SELECT auction, window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), "
        "INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end",
    ),
    # The same count emitting each window once, final: what Flink's window TVF aggregation
    # does (its output is append-only), where `tumble` above updates every open window.
    "tumble_close": (
        "SELECT auction, window_start, count(*) AS n FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) "
        "GROUP BY auction, window_start, window_end EMIT ON WINDOW CLOSE",
        "SELECT auction, window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), "
        "INTERVAL '10' SECOND)) GROUP BY auction, window_start, window_end",
    ),
}

FLINK_DDL = """CREATE TABLE bid (
  auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
  date_time TIMESTAMP(3), extra STRING,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'csv')"""


def write_csv(path, rows):
    """Bids shaped like Nexmark's: auctions among the ~100 most recent (one new auction
    per 15 bids, every other bid on a hot one), bidders among the most recent people,
    log-uniform prices, four hot channels, 10,000 event-time bids per second, and about
    100 bytes of `extra` padding."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(42)
    chunk = 1_000_000
    start_us = 1_436_918_400_000_000  # 2015-07-15 00:00:00 UTC
    pool = np.array(
        ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=n)) for n in rng.integers(80, 120, size=1000)]
    )
    channels = np.array(["Google", "Facebook", "Baidu", "Apple"] + [f"channel-{i}" for i in range(4, 100)])
    tmp = path + ".part"
    with open(tmp, "w") as f:
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            i = np.arange(lo, lo + n)
            newest = 1000 + i // 15
            hot = rng.random(n) < 0.5
            auction = np.where(hot, newest - newest % 2, newest - rng.integers(0, 100, size=n))
            bidder = 1000 + np.maximum(0, i // 46 - rng.integers(0, 1000, size=n))
            price = np.round(10 ** (rng.random(n) * 6) * 100).astype(np.int64)
            ch = np.where(rng.random(n) < 0.5, rng.integers(0, 4, size=n), rng.integers(4, 100, size=n))
            ts = pd.to_datetime(start_us + i * 100, unit="us").strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
            df = pd.DataFrame(
                {
                    "auction": auction,
                    "bidder": bidder,
                    "price": price,
                    "channel": channels[ch],
                    "url": pd.Series(ch).map(lambda c: f"https://www.nexmark.com/item.htm?query=1&channel_id={c}"),
                    "date_time": ts,
                    "extra": pool[rng.integers(0, 1000, size=n)],
                }
            )
            df.to_csv(f, header=False, index=False)
    os.replace(tmp, path)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def java_child():
    """The JVM PyFlink started for this process."""
    me = os.getpid()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1 : s.rindex(")")]
        ppid = int(s.rsplit(")", 1)[1].split()[1])
        if ppid == me and comm == "java":
            return int(p)
    raise RuntimeError("no JVM child found")


def flink_job(name, path, rows):
    """Runs one query in a fresh Flink mini-cluster; prints a JSON result."""
    from pyflink.table import EnvironmentSettings, Schema, TableDescriptor, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "2")
    env.execute_sql(FLINK_DDL.format(path=path))
    table = env.sql_query(QUERIES[name][1])
    env.create_temporary_table(
        "out",
        TableDescriptor.for_connector("blackhole")
        .schema(Schema.new_builder().from_row_data_type(table.get_schema().to_row_data_type()).build())
        .build(),
    )
    jvm = java_child()
    cpu0, t0 = cpu_seconds(jvm), time.monotonic()
    table.execute_insert("out").wait()
    secs, cpu = time.monotonic() - t0, cpu_seconds(jvm) - cpu0
    print(json.dumps({"events_per_s": rows / secs, "cpu_s": cpu, "per_cpu_s": rows / cpu}))


def run_flink(name, path, rows):
    out = subprocess.run(
        [sys.executable, __file__, "--flink-job", name, "--csv", path, "--rows", str(rows)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_strom(name, csv_dir, rows, query_dir):
    env = dict(
        os.environ,
        STROM_NEXMARK_CSV=csv_dir,
        STROM_NEXMARK_DIR=query_dir,
        STROM_NEXMARK_QUERIES=name,
        STROM_NEXMARK_EVENTS=str(rows),
    )
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "nexmark"], env=env, check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        m = re.match(r"\| (\S+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m and m.group(1) == name:
            return {"events_per_s": float(m.group(2)), "cpu_s": float(m.group(3)), "per_cpu_s": float(m.group(4))}
    raise RuntimeError(f"Strom did not run {name}:\n{out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--out")
    ap.add_argument("--flink-job")
    ap.add_argument("--csv")
    # Strom's posix_fs source with log_by_reference = 'true': the change log keeps each
    # batch's file and byte range, not its rows (as Flink's file source keeps offsets).
    ap.add_argument("--by-reference", action="store_true")
    a = ap.parse_args()
    if a.by_reference:
        os.environ["STROM_NEXMARK_CSV_BY_REFERENCE"] = "1"
    if a.flink_job:
        flink_job(a.flink_job, a.csv, a.rows)
        return
    base = os.environ.get("STROM_BENCH_DIR", os.path.expanduser("~/.cache/strom/flink-bench"))
    csv_dir = os.path.join(base, f"bids-{a.rows}")
    path = os.path.join(csv_dir, "bids.csv")
    if not os.path.exists(path):
        os.makedirs(csv_dir, exist_ok=True)
        print(f"writing {a.rows} bids to {path}", flush=True)
        write_csv(path, a.rows)
    print(f"{a.rows} bids, {os.path.getsize(path) / 1e6:.0f} MB; {a.rounds} rounds", flush=True)
    query_dir = tempfile.mkdtemp()
    names = a.queries.split(",")
    for n in names:
        with open(os.path.join(query_dir, f"{n}.sql"), "w") as f:
            f.write(QUERIES[n][0])
    results = {n: {"strom": [], "flink": []} for n in names}
    for r in range(a.rounds):
        for n in names:
            s = run_strom(n, csv_dir, a.rows, query_dir)
            f = run_flink(n, path, a.rows)
            results[n]["strom"].append(s)
            results[n]["flink"].append(f)
            print(f"round {r + 1} {n}: strom {s}, flink {f}", flush=True)
    med = lambda runs, k: statistics.median(x[k] for x in runs)  # noqa: E731
    table = [
        "| query | Strom events/s | Flink events/s | ratio | Strom events per CPU-s | Flink events per CPU-s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        s, f = results[n]["strom"], results[n]["flink"]
        se, fe, sc, fc = med(s, "events_per_s"), med(f, "events_per_s"), med(s, "per_cpu_s"), med(f, "per_cpu_s")
        table.append(f"| {n} | {se:,.0f} | {fe:,.0f} | {se / fe:.1f}× | {sc:,.0f} | {fc:,.0f} | {sc / fc:.1f}× |")
    print("\n".join(table))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
