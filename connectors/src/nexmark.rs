//! The Nexmark event generator (people, auctions, bids of an online auction site), after
//! the public reference generator of the Nexmark benchmark (Beam's and Flink's
//! `NexmarkGenerator`), written from its rules:
//!
//! - Events are numbered from 0. In each epoch of 50 events, 1 is a person, 3 are
//!   auctions and 46 are bids, in that order (proportions 1:3:46).
//! - Event `n` happens at `base_time + n * 1e6 / rate` µs.
//! - Ids: people and auctions are numbered from 1000 in event order; an auction's seller
//!   and a bid's bidder are among the last 1,000 people (plus a lead of 10 not yet
//!   created), a bid's auction among the last 100 in-flight auctions (plus a lead of 10).
//!   "Hot" ids are preferred: 1 in 2 bids goes to a hot auction, 3 in 4 bidders and
//!   sellers are hot people (ids rounded down to a multiple of 100).
//! - Prices are log-uniform: `round(10^(6 u) * 100)` cents, `u` uniform in [0, 1).
//! - Half the bids come from 4 hot channels (Google, Facebook, Baidu, Apple), the others
//!   from `channel-<n>` of 10,000, each with its URL.
//! - Records are padded with `extra` characters to average 200 (person), 500 (auction)
//!   and 100 (bid) bytes.
//!
//! Every event's random choices come from a generator seeded with (seed, event number),
//! so event `n` is the same whoever generates it, in whatever order: a source can be
//! split between readers and resumed at any event.

/// Events per epoch: 1 person, 3 auctions, 46 bids.
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;

const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 100;
const HOT_SELLER_RATIO: u64 = 100;
const HOT_BIDDER_RATIO: u64 = 100;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const CHANNELS: u64 = 10_000;

const US_STATES: &[&str] = &["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: &[&str] = &[
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: &[&str] = &[
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: &[&str] = &[
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const HOT_CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// How events are generated (`nexmark.*` options).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub seed: u64,
    /// Nanoseconds of event time between events (the spacing of `date_time`).
    pub gap_ns: u64,
    /// Event time of event 0, µs since the Unix epoch.
    pub base_time_us: i64,
    pub hot_auction_ratio: u64,
    pub hot_seller_ratio: u64,
    pub hot_bidder_ratio: u64,
    pub avg_person_bytes: usize,
    pub avg_auction_bytes: usize,
    pub avg_bid_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            gap_ns: 100,
            // 2026-01-01T00:00:00Z: fixed, so runs are repeatable.
            base_time_us: 1_767_225_600_000_000,
            hot_auction_ratio: 2,
            hot_seller_ratio: 4,
            hot_bidder_ratio: 4,
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    /// µs since the Unix epoch.
    pub date_time: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The combined stream's `event_type` is the discriminant.
    Person = 0,
    Auction = 1,
    Bid = 2,
}

/// The kind of event `n`.
pub fn kind_of(n: u64) -> Kind {
    match n % TOTAL_PROPORTION {
        r if r < PERSON_PROPORTION => Kind::Person,
        r if r < PERSON_PROPORTION + AUCTION_PROPORTION => Kind::Auction,
        _ => Kind::Bid,
    }
}

/// SplitMix64: small, fast, and good enough for benchmark data.
struct Rng(u64);

impl Rng {
    fn for_event(seed: u64, n: u64) -> Rng {
        let mut r = Rng(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }

    /// 3 to `max - 1` characters, lower-case letters with 1 in 13 a space.
    fn string(&mut self, max: u64) -> String {
        self.string_with(max, ' ')
    }

    /// 3 to `max - 1` characters, lower-case letters with 1 in 13 `special`.
    fn string_with(&mut self, max: u64, special: char) -> String {
        let len = 3 + self.below(max - 3);
        let mut s = String::with_capacity(len as usize);
        for _ in 0..len {
            s.push(if self.below(13) == 0 {
                special
            } else {
                (b'a' + self.below(26) as u8) as char
            });
        }
        s
    }

    fn exact_string(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        for _ in 0..len {
            s.push((b'a' + self.below(26) as u8) as char);
        }
        s
    }

    /// Padding that brings a record of `size` bytes to `average` on average (±20%).
    fn extra(&mut self, size: usize, average: usize) -> String {
        if size > average {
            return String::new();
        }
        let want = average - size;
        let delta = (want as f64 * 0.2).round() as usize;
        let min = want - delta;
        let len = if delta == 0 {
            min
        } else {
            min + self.below(2 * delta as u64) as usize
        };
        self.exact_string(len)
    }

    /// Log-uniform prices from 1.00 to 1,000,000.00 (in cents).
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }
}

/// The base-0 id of the last person created at or before event `n`.
// Written for any proportions (with one person per epoch the offset is always 0).
#[allow(clippy::unnecessary_min_or_max)]
fn last_person(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    let offset = (n % TOTAL_PROPORTION).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + offset
}

/// The base-0 id of the last auction created at or before event `n`.
fn last_auction(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    let offset = (n % TOTAL_PROPORTION)
        .saturating_sub(PERSON_PROPORTION)
        .min(AUCTION_PROPORTION - 1);
    epoch * AUCTION_PROPORTION + offset
}

/// A recent person (or one of the next few), base 0.
fn some_person(n: u64, rng: &mut Rng) -> u64 {
    let people = last_person(n) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.below(active + PERSON_ID_LEAD)
}

/// An in-flight auction (or one of the next few), base 0.
fn some_auction(n: u64, rng: &mut Rng) -> u64 {
    let max = last_auction(n);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

/// The URL of a page of the site.
fn base_url(rng: &mut Rng) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        rng.string_with(5, '_'),
        rng.string_with(5, '_'),
        rng.string_with(5, '_')
    )
}

/// A generator of the events of one configuration.
#[derive(Debug, Clone)]
pub struct Generator {
    config: Config,
    hot_urls: Vec<String>,
}

impl Generator {
    pub fn new(config: Config) -> Generator {
        let mut rng = Rng::for_event(config.seed, u64::MAX);
        let hot_urls = HOT_CHANNELS.iter().map(|_| base_url(&mut rng)).collect();
        Generator { config, hot_urls }
    }

    /// The event time of event `n`, µs since the Unix epoch.
    pub fn time_of(&self, n: u64) -> i64 {
        let offset = u128::from(n) * u128::from(self.config.gap_ns) / 1000;
        self.config
            .base_time_us
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// Event `n`.
    pub fn event(&self, n: u64) -> Event {
        match kind_of(n) {
            Kind::Person => Event::Person(self.person(n)),
            Kind::Auction => Event::Auction(self.auction(n)),
            Kind::Bid => Event::Bid(self.bid(n)),
        }
    }

    pub fn person(&self, n: u64) -> Person {
        let mut rng = Rng::for_event(self.config.seed, n);
        let name = format!("{} {}", rng.pick(FIRST_NAMES), rng.pick(LAST_NAMES));
        let email_address = format!("{}@{}.com", rng.string(7), rng.string(5));
        let credit_card = (0..4)
            .map(|_| format!("{:04}", rng.below(10_000)))
            .collect::<Vec<_>>()
            .join(" ");
        let city = rng.pick(US_CITIES).to_string();
        let state = rng.pick(US_STATES).to_string();
        let size =
            8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        Person {
            id: (FIRST_PERSON_ID + last_person(n)) as i64,
            extra: rng.extra(size, self.config.avg_person_bytes),
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: self.time_of(n),
        }
    }

    pub fn auction(&self, n: u64) -> Auction {
        let mut rng = Rng::for_event(self.config.seed, n);
        let seller = if rng.below(self.config.hot_seller_ratio) > 0 {
            (last_person(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            some_person(n, &mut rng)
        };
        let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES);
        let initial_bid = rng.price();
        let date_time = self.time_of(n);
        // Open until about twice the time it takes to create the in-flight auctions.
        let horizon_events = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION;
        let horizon_us = (self.time_of(n.saturating_add(horizon_events)) - date_time).max(1) as u64;
        let expires = date_time + 1 + rng.below(horizon_us * 2) as i64;
        let item_name = rng.string(20);
        let description = rng.string(100);
        let reserve = initial_bid + rng.price();
        let size = 8 + item_name.len() + description.len() + 8 + 8 + 8 + 8 + 8;
        Auction {
            id: (FIRST_AUCTION_ID + last_auction(n)) as i64,
            extra: rng.extra(size, self.config.avg_auction_bytes),
            item_name,
            description,
            initial_bid,
            reserve,
            date_time,
            expires,
            seller: (FIRST_PERSON_ID + seller) as i64,
            category: category as i64,
        }
    }

    pub fn bid(&self, n: u64) -> Bid {
        let mut rng = Rng::for_event(self.config.seed, n);
        let auction = if rng.below(self.config.hot_auction_ratio) > 0 {
            (last_auction(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            some_auction(n, &mut rng)
        };
        let bidder = if rng.below(self.config.hot_bidder_ratio) > 0 {
            (last_person(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            some_person(n, &mut rng)
        };
        let price = rng.price();
        let (channel, url) = if rng.below(2) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            (HOT_CHANNELS[i].to_string(), self.hot_urls[i].clone())
        } else {
            let c = rng.below(CHANNELS);
            // A channel's URL is fixed: drawn from its own generator.
            let mut crng = Rng::for_event(self.config.seed ^ 0xC4A7_7E15, c);
            let mut url = base_url(&mut crng);
            // 9 in 10 channels carry their id (its 32 bits reversed, as a positive number).
            if crng.below(10) > 0 {
                url.push_str(&format!(
                    "&channel_id={}",
                    (c as i32).reverse_bits().unsigned_abs()
                ));
            }
            (format!("channel-{c}"), url)
        };
        let size = 8 + 8 + 8 + 8;
        Bid {
            auction: (FIRST_AUCTION_ID + auction) as i64,
            bidder: (FIRST_PERSON_ID + bidder) as i64,
            price,
            channel,
            url,
            date_time: self.time_of(n),
            extra: rng.extra(size, self.config.avg_bid_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_ids_and_times_follow_the_rules() {
        let g = Generator::new(Config::default());
        let kinds: Vec<Kind> = (0..50).map(kind_of).collect();
        assert_eq!(kinds[0], Kind::Person);
        assert!(kinds[1..4].iter().all(|k| *k == Kind::Auction));
        assert!(kinds[4..].iter().all(|k| *k == Kind::Bid));
        // People and auctions are numbered from 1000 in event order.
        assert_eq!(g.person(0).id, 1000);
        assert_eq!(g.person(50).id, 1001);
        assert_eq!(
            [
                g.auction(1).id,
                g.auction(2).id,
                g.auction(3).id,
                g.auction(51).id
            ],
            [1000, 1001, 1002, 1003]
        );
        // 10M events/s: 0.1 µs apart.
        assert_eq!(g.time_of(10) - g.time_of(0), 1);
        let slow = Generator::new(Config {
            gap_ns: 1_000_000,
            ..Config::default()
        });
        assert_eq!(slow.time_of(3) - slow.time_of(0), 3000);
    }

    #[test]
    fn events_are_deterministic_per_number_and_seed() {
        let g = Generator::new(Config::default());
        assert_eq!(g.event(12345), g.event(12345));
        assert_eq!(g.bid(777), Generator::new(Config::default()).bid(777));
        let other = Generator::new(Config {
            seed: 1,
            ..Config::default()
        });
        assert_ne!(g.bid(777), other.bid(777));
    }

    #[test]
    fn bids_reference_existing_or_imminent_auctions_and_people_with_hot_skew() {
        let g = Generator::new(Config::default());
        let n_events = 200_000u64;
        let mut hot_auction = 0;
        let mut bids = 0;
        let mut hot_channel = 0;
        let mut bytes = 0usize;
        for n in (0..n_events).filter(|n| kind_of(*n) == Kind::Bid) {
            let b = g.bid(n);
            bids += 1;
            let last = (FIRST_AUCTION_ID + last_auction(n)) as i64;
            assert!(b.auction <= last + AUCTION_ID_LEAD as i64, "{b:?}");
            assert!(b.auction >= last - NUM_IN_FLIGHT_AUCTIONS as i64, "{b:?}");
            let last_p = (FIRST_PERSON_ID + last_person(n)) as i64;
            assert!(b.bidder <= last_p + PERSON_ID_LEAD as i64 + 1, "{b:?}");
            if (b.auction - FIRST_AUCTION_ID as i64) % HOT_AUCTION_RATIO as i64 == 0 {
                hot_auction += 1;
            }
            if HOT_CHANNELS.contains(&b.channel.as_str()) {
                hot_channel += 1;
            }
            assert!((100..=100_000_000).contains(&b.price), "{b:?}");
            bytes += 32 + b.extra.len();
        }
        // Half the bids are hot by rule, plus the cold ones that land on a multiple of 100.
        let share = hot_auction as f64 / bids as f64;
        assert!((0.49..0.53).contains(&share), "hot auction share {share}");
        let share = hot_channel as f64 / bids as f64;
        assert!((0.48..0.52).contains(&share), "hot channel share {share}");
        let avg = bytes as f64 / bids as f64;
        assert!((95.0..105.0).contains(&avg), "average bid size {avg}");
    }

    #[test]
    fn records_average_their_sizes_and_auctions_expire_after_they_open() {
        let g = Generator::new(Config::default());
        let (mut p_bytes, mut people) = (0usize, 0usize);
        let (mut a_bytes, mut auctions) = (0usize, 0usize);
        for n in 0..100_000u64 {
            match g.event(n) {
                Event::Person(p) => {
                    people += 1;
                    p_bytes += 8
                        + p.name.len()
                        + p.email_address.len()
                        + p.credit_card.len()
                        + p.city.len()
                        + p.state.len()
                        + p.extra.len();
                    assert_eq!(p.credit_card.len(), 19);
                }
                Event::Auction(a) => {
                    auctions += 1;
                    a_bytes += 48 + a.item_name.len() + a.description.len() + a.extra.len();
                    assert!(a.expires > a.date_time);
                    assert!(a.reserve >= a.initial_bid);
                    assert!((10..15).contains(&a.category));
                }
                Event::Bid(_) => {}
            }
        }
        assert_eq!((people, auctions), (2000, 6000));
        let p = p_bytes as f64 / people as f64;
        let a = a_bytes as f64 / auctions as f64;
        assert!((190.0..210.0).contains(&p), "person size {p}");
        assert!((480.0..520.0).contains(&a), "auction size {a}");
    }

    #[test]
    fn prices_are_log_uniform() {
        let g = Generator::new(Config::default());
        // Each decade of price (1-10, 10-100, ... dollars) holds about a sixth of bids.
        let mut decades = [0usize; 6];
        let mut total = 0;
        for n in (0..120_000u64).filter(|n| kind_of(*n) == Kind::Bid) {
            let dollars = g.bid(n).price as f64 / 100.0;
            let d = (dollars.log10().floor() as usize).min(5);
            decades[d] += 1;
            total += 1;
        }
        for (d, count) in decades.iter().enumerate() {
            let share = *count as f64 / total as f64;
            assert!((0.15..0.18).contains(&share), "decade {d}: {share}");
        }
    }
}

/// `connector = 'nexmark'`: a source of generated events.
///
/// ```sql
/// CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR,
///                    url VARCHAR, date_time TIMESTAMP, extra VARCHAR)
/// WITH (connector = 'nexmark', nexmark.table.type = 'Bid', nexmark.event.num = '10000000');
/// ```
///
/// Events `0 .. nexmark.event.num` are generated (all kinds; the source keeps those of its
/// `nexmark.table.type`), in blocks of `nexmark.max.chunk.size` events, one transaction per
/// block. With `nexmark.split.num = k` readers, reader `s` generates blocks `s, s + k, ...`;
/// each commits the next block it will generate with its rows, so a restart resumes
/// exactly there (events are a function of their number). Declared columns are matched by
/// name with the event type's fields. `CREATE TABLE ... WITH (connector = 'nexmark')`
/// stores the rows too, so queries can read them (the benchmark's smoke test compares
/// each view with its query run over such tables).
pub mod source {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, Int32Builder, Int64Builder, RecordBatch, RecordBatchOptions, StringBuilder,
        TimestampMicrosecondBuilder,
    };
    use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
    use strom_catalog::{ConnectorDef, TableDef};

    use super::{kind_of, Config, Event, Generator, Kind};

    const OPTIONS: &[&str] = &[
        "connector",
        "nexmark.table.type",
        "nexmark.event.num",
        "nexmark.max.chunk.size",
        "nexmark.split.num",
        "nexmark.seed",
        "nexmark.min.event.gap.in.ns",
        "source_rate_limit",
    ];

    /// The offset "topic" reader state is kept under.
    const STATE: &str = "nexmark";

    pub const PERSON_FIELDS: &[&str] = &[
        "id",
        "name",
        "email_address",
        "credit_card",
        "city",
        "state",
        "date_time",
        "extra",
    ];
    pub const AUCTION_FIELDS: &[&str] = &[
        "id",
        "item_name",
        "description",
        "initial_bid",
        "reserve",
        "date_time",
        "expires",
        "seller",
        "category",
        "extra",
    ];
    pub const BID_FIELDS: &[&str] = &[
        "auction",
        "bidder",
        "price",
        "channel",
        "url",
        "date_time",
        "extra",
    ];

    /// The columns of the combined event stream (no `nexmark.table.type`): `event_type`
    /// (0 person, 1 auction, 2 bid), the event's `date_time`, and every other field of
    /// each kind with the kind as a prefix (`person_name`, `auction_seller`,
    /// `bid_price`, ...), NULL in rows of the other kinds.
    pub const EVENT_TYPE: &str = "event_type";
    const KINDS: [(Kind, &str, &[&str]); 3] = [
        (Kind::Person, "person_", PERSON_FIELDS),
        (Kind::Auction, "auction_", AUCTION_FIELDS),
        (Kind::Bid, "bid_", BID_FIELDS),
    ];

    /// What a declared column holds.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Field {
        /// Field `i` of the source's kind (of the kind's `*_FIELDS`).
        Own(usize),
        /// Combined stream: field `i` of events of kind `k`, NULL for other kinds.
        Of(Kind, usize),
        /// Combined stream: the event's kind (0 person, 1 auction, 2 bid).
        EventType,
        /// Combined stream: every kind's `date_time`.
        Time,
    }

    /// The field a combined-stream column names, if any.
    fn combined_field(name: &str) -> Option<(Field, &'static str)> {
        match name {
            EVENT_TYPE => return Some((Field::EventType, "id")),
            "date_time" => return Some((Field::Time, "date_time")),
            _ => {}
        }
        KINDS.iter().find_map(|(kind, prefix, fields)| {
            let rest = name.strip_prefix(prefix)?;
            let i = fields
                .iter()
                .position(|f| *f == rest && *f != "date_time")?;
            Some((Field::Of(*kind, i), fields[i]))
        })
    }

    fn combined_names() -> Vec<String> {
        let mut out = vec![EVENT_TYPE.to_string(), "date_time".to_string()];
        for (_, prefix, fields) in KINDS {
            out.extend(
                fields
                    .iter()
                    .filter(|f| **f != "date_time")
                    .map(|f| format!("{prefix}{f}")),
            );
        }
        out
    }

    /// A checked declaration.
    #[derive(Debug, Clone)]
    pub struct Spec {
        /// `None`: the combined event stream.
        pub kind: Option<Kind>,
        pub events: u64,
        pub chunk: u64,
        pub splits: usize,
        pub config: Config,
        pub rate_limit: Option<u64>,
        /// Per declared visible column: the field it holds.
        pub fields: Vec<Field>,
    }

    fn number(c: &ConnectorDef, k: &str, default: u64) -> Result<u64, String> {
        match c.options.get(k) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("option \"{k}\": \"{v}\" is not a non-negative integer")),
        }
    }

    pub fn spec(def: &TableDef, c: &ConnectorDef) -> Result<Spec, String> {
        for k in c.options.keys() {
            if !OPTIONS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown option \"{k}\" for connector nexmark (known: {})",
                    OPTIONS.join(", ")
                ));
            }
        }
        if c.is_sink {
            return Err(
                "connector nexmark generates rows: use CREATE SOURCE or CREATE TABLE".into(),
            );
        }
        if !c.format.is_empty() || !c.includes.is_empty() {
            return Err(
                "connector nexmark takes no FORMAT or INCLUDE (it makes typed rows)".into(),
            );
        }
        let (kind, names) = match c
            .options
            .get("nexmark.table.type")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            Some("person") => (Some(Kind::Person), PERSON_FIELDS),
            Some("auction") => (Some(Kind::Auction), AUCTION_FIELDS),
            Some("bid") => (Some(Kind::Bid), BID_FIELDS),
            None => (None, &[][..]),
            Some(other) => {
                return Err(format!(
                    "nexmark.table.type = '{other}' is not Person, Auction or Bid (leave it out for the combined event stream)"
                ))
            }
        };
        let mut fields = Vec::new();
        for (i, col) in def.visible_columns() {
            let found = match kind {
                Some(_) => names
                    .iter()
                    .position(|n| *n == col.name)
                    .map(|i| (Field::Own(i), names[i])),
                None => combined_field(&col.name),
            };
            let Some((f, name)) = found else {
                let (what, known) = match kind {
                    Some(k) => (format!("nexmark {k:?} events"), names.join(", ")),
                    None => (
                        "the combined nexmark event stream (no nexmark.table.type)".into(),
                        combined_names().join(", "),
                    ),
                };
                return Err(format!(
                    "column \"{}\" is not a field of {what} (fields: {known})",
                    col.name
                ));
            };
            let ty = col.ty.to_arrow();
            let ok = match name {
                "date_time" | "expires" => {
                    matches!(ty, DataType::Timestamp(TimeUnit::Microsecond, _))
                }
                "id" | "initial_bid" | "reserve" | "seller" | "category" | "auction" | "bidder"
                | "price" => matches!(ty, DataType::Int64 | DataType::Int32),
                _ => matches!(ty, DataType::Utf8),
            };
            if !ok {
                return Err(format!(
                    "column \"{}\" has type {}, which the nexmark field does not fit (use {})",
                    col.name,
                    col.ty.pg_name(),
                    match name {
                        "date_time" | "expires" => "TIMESTAMP or TIMESTAMPTZ",
                        "id" | "initial_bid" | "reserve" | "seller" | "category" | "auction"
                        | "bidder" | "price" => "BIGINT",
                        _ => "VARCHAR",
                    }
                ));
            }
            if let Field::Of(..) = f {
                // NULL in the other kinds' rows.
                if !col.nullable {
                    return Err(format!(
                        "column \"{}\" is NULL in the combined stream's rows of other kinds: it cannot be NOT NULL",
                        col.name
                    ));
                }
                if def.watermark.as_ref().is_some_and(|w| w.column == i) {
                    return Err(format!(
                        "a WATERMARK on \"{}\" would set every row of the other kinds aside as late (it is NULL there): use date_time",
                        col.name
                    ));
                }
            }
            fields.push(f);
        }
        let chunk = number(c, "nexmark.max.chunk.size", 1024)?;
        if !(1..=100_000).contains(&chunk) {
            return Err("nexmark.max.chunk.size must be from 1 to 100000".into());
        }
        let splits = number(c, "nexmark.split.num", 1)?;
        if !(1..=16).contains(&splits) {
            return Err("nexmark.split.num must be from 1 to 16".into());
        }
        let config = Config {
            seed: number(c, "nexmark.seed", 0)?,
            gap_ns: number(c, "nexmark.min.event.gap.in.ns", 100)?,
            ..Config::default()
        };
        if splits > 1 && def.watermark.is_some() {
            return Err("nexmark.split.num > 1 with a WATERMARK: readers run at their own pace, so one could make another's rows late (use one reader)".into());
        }
        let rate_limit = c
            .options
            .get("source_rate_limit")
            .map(|_| number(c, "source_rate_limit", 0))
            .transpose()?;
        Ok(Spec {
            kind,
            events: number(c, "nexmark.event.num", u64::MAX)?,
            chunk,
            splits: splits as usize,
            config,
            rate_limit,
            fields,
        })
    }

    /// One declared column being built.
    enum Col {
        Int64(Int64Builder),
        Int32(Int32Builder),
        Time(TimestampMicrosecondBuilder),
        Text(StringBuilder),
    }

    impl Col {
        fn null(&mut self) {
            match self {
                Col::Int64(b) => b.append_null(),
                Col::Int32(b) => b.append_null(),
                Col::Time(b) => b.append_null(),
                Col::Text(b) => b.append_null(),
            }
        }

        /// A builder for a column of type `ty` (one [`spec`] accepted).
        fn new(ty: &DataType, rows: usize) -> Col {
            match ty {
                DataType::Int32 => Col::Int32(Int32Builder::with_capacity(rows)),
                DataType::Int64 => Col::Int64(Int64Builder::with_capacity(rows)),
                DataType::Timestamp(_, tz) => Col::Time(
                    TimestampMicrosecondBuilder::with_capacity(rows).with_timezone_opt(tz.clone()),
                ),
                _ => Col::Text(StringBuilder::with_capacity(rows, rows * 16)),
            }
        }

        fn int(&mut self, v: i64) {
            match self {
                Col::Int64(b) => b.append_value(v),
                // Out of an INT column's range: NULL (ids grow past 2^31 only in very
                // long runs).
                Col::Int32(b) => b.append_option(i32::try_from(v).ok()),
                _ => unreachable!("spec checked the column type"),
            }
        }

        fn time(&mut self, us: i64) {
            match self {
                Col::Time(b) => b.append_value(us),
                _ => unreachable!("spec checked the column type"),
            }
        }

        fn text(&mut self, v: &str) {
            match self {
                Col::Text(b) => b.append_value(v),
                _ => unreachable!("spec checked the column type"),
            }
        }

        fn finish(&mut self) -> ArrayRef {
            match self {
                Col::Int64(b) => Arc::new(b.finish()),
                Col::Int32(b) => Arc::new(b.finish()),
                Col::Time(b) => Arc::new(b.finish()),
                Col::Text(b) => Arc::new(b.finish()),
            }
        }
    }

    /// The declared columns of events `first..last` that are of the spec's kind, built
    /// column-wise (no per-value allocation beyond the generator's own).
    pub fn batch(
        g: &Generator,
        spec: &Spec,
        schema: &SchemaRef,
        first: u64,
        last: u64,
    ) -> Result<RecordBatch, String> {
        let cap = (last - first) as usize;
        let mut cols: Vec<Col> = schema
            .fields()
            .iter()
            .map(|f| Col::new(f.data_type(), cap))
            .collect();
        let mut rows = 0;
        for n in first..last {
            let kind = kind_of(n);
            if spec.kind.is_some_and(|k| k != kind) {
                continue;
            }
            rows += 1;
            let event = match kind {
                Kind::Person => Event::Person(g.person(n)),
                Kind::Auction => Event::Auction(g.auction(n)),
                Kind::Bid => Event::Bid(g.bid(n)),
            };
            for (&f, col) in spec.fields.iter().zip(cols.iter_mut()) {
                match f {
                    Field::Own(i) => put(&event, i, col),
                    Field::Of(k, i) if k == kind => put(&event, i, col),
                    Field::Of(..) => col.null(),
                    Field::EventType => col.int(kind as i64),
                    Field::Time => col.time(match &event {
                        Event::Person(p) => p.date_time,
                        Event::Auction(a) => a.date_time,
                        Event::Bid(b) => b.date_time,
                    }),
                }
            }
        }
        let columns: Vec<ArrayRef> = cols.iter_mut().map(Col::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
            .map_err(|e| e.to_string())
    }

    /// Appends field `f` (of its kind's `*_FIELDS`) of `event` to `col`.
    fn put(event: &Event, f: usize, col: &mut Col) {
        match event {
            Event::Person(p) => match f {
                0 => col.int(p.id),
                1 => col.text(&p.name),
                2 => col.text(&p.email_address),
                3 => col.text(&p.credit_card),
                4 => col.text(&p.city),
                5 => col.text(&p.state),
                6 => col.time(p.date_time),
                _ => col.text(&p.extra),
            },
            Event::Auction(a) => match f {
                0 => col.int(a.id),
                1 => col.text(&a.item_name),
                2 => col.text(&a.description),
                3 => col.int(a.initial_bid),
                4 => col.int(a.reserve),
                5 => col.time(a.date_time),
                6 => col.time(a.expires),
                7 => col.int(a.seller),
                8 => col.int(a.category),
                _ => col.text(&a.extra),
            },
            Event::Bid(b) => match f {
                0 => col.int(b.auction),
                1 => col.int(b.bidder),
                2 => col.int(b.price),
                3 => col.text(&b.channel),
                4 => col.text(&b.url),
                5 => col.time(b.date_time),
                _ => col.text(&b.extra),
            },
        }
    }

    /// How a nexmark source or table is read (see [`crate::generated`]).
    pub fn blocks(def: &TableDef) -> Result<crate::generated::Blocks, String> {
        let c = def.connector.as_ref().ok_or("no connector")?;
        let spec = spec(def, c)?;
        let generator = Generator::new(spec.config.clone());
        let schema = crate::generated::schema(def);
        let sp = spec.clone();
        Ok(crate::generated::Blocks {
            state: STATE,
            total: spec.events,
            chunk: spec.chunk,
            splits: spec.splits,
            rate: spec.rate_limit,
            rows: Arc::new(move |first, last| batch(&generator, &sp, &schema, first, last)),
        })
    }
}
