//! The `nexmark` source connector: the rows equal the generator's events computed here
//! (so a benchmark over them cannot measure wrong answers), and a source killed in the
//! middle resumes at its committed block without losing or repeating events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strom_connectors::nexmark::{kind_of, Config, Generator, Kind};

use crate::server::{text_rows, TestServer};

const EVENTS: u64 = 30_000;

/// Per auction: bids, max price, and the sum of prices, from the generator.
fn expected() -> BTreeMap<i64, (i64, i64, i64)> {
    let g = Generator::new(Config::default());
    let mut out: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    for n in (0..EVENTS).filter(|n| kind_of(*n) == Kind::Bid) {
        let b = g.bid(n);
        let e = out.entry(b.auction).or_insert((0, i64::MIN, 0));
        e.0 += 1;
        e.1 = e.1.max(b.price);
        e.2 += b.price;
    }
    out
}

async fn per_auction(c: &tokio_postgres::Client) -> BTreeMap<i64, (i64, i64, i64)> {
    c.query("SELECT auction, n, top, total FROM per_auction", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get::<_, i64>(3))))
        .collect()
}

async fn wait_count(c: &tokio_postgres::Client, want: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n: i64 = c
            .query_one("SELECT coalesce(sum(n), 0)::bigint FROM per_auction", &[])
            .await
            .unwrap()
            .get(0);
        if n == want {
            return;
        }
        assert!(n < want, "{n} bids, more than the {want} generated");
        assert!(
            Instant::now() < deadline,
            "{n} of {want} bids after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_bids_equal_the_generator_across_kill_9() {
    let want = expected();
    let bids: i64 = want.values().map(|v| v.0).sum();
    assert_eq!(bids as u64, EVENTS / 50 * 46);
    let mut server = TestServer::start();
    let c = server.client().await;
    // Slowed down (2,000 rows/s over 2 readers, 256-event blocks) so the kill lands mid-stream.
    c.batch_execute(&format!(
        "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP, extra VARCHAR)
         WITH (connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = '{EVENTS}',
               nexmark.max.chunk.size = '256', nexmark.split.num = '2', source_rate_limit = '4000');
         CREATE MATERIALIZED VIEW per_auction AS
           SELECT auction, count(*) AS n, max(price) AS top, sum(price)::bigint AS total FROM bid GROUP BY auction;
         CREATE MATERIALIZED VIEW q1 AS
           SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid;"
    ))
    .await
    .unwrap();
    // Kill once some but not all bids are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = c
            .query_one("SELECT coalesce(sum(n), 0)::bigint FROM per_auction", &[])
            .await
            .unwrap()
            .get(0);
        if n > 2000 {
            assert!(n < bids, "finished before the kill; slow the source down");
            break;
        }
        assert!(Instant::now() < deadline, "no bids arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);
    server.kill();
    server.spawn();
    let c = server.client().await;
    wait_count(&c, bids, 60).await;
    assert_eq!(per_auction(&c).await, want);
    // q1 over the same rows: the price conversion, row for row.
    assert_eq!(
        text_rows(
            &c,
            "SELECT count(*), sum(price) = (SELECT sum(total) * 0.908 FROM per_auction) FROM q1"
        )
        .await,
        vec![vec![Some(bids.to_string()), Some("t".into())]]
    );
}
