//! A minimal Kafka reader that applies transaction markers itself, for checking
//! exactly-once sinks against a broker that does not (tansu returns no aborted-transaction
//! list, so librdkafka's `read_committed` still delivers aborted records).
//!
//! It speaks `Fetch` v4 over a plain socket and parses v2 record batches: records of a
//! transactional batch are held per producer id until that producer's control batch says
//! commit (kept) or abort (discarded). Compressed batches are not supported (Strom's sink
//! producer does not compress unless told to).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

/// A record's key and value (`None`: null).
pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

#[derive(Debug, Default)]
pub struct Transactional {
    /// Records not in a transaction, and records of committed transactions, in log order
    /// of their commit.
    pub committed: Vec<Record>,
    /// Records of aborted transactions.
    pub aborted: usize,
    /// Records of transactions with no marker yet.
    pub open: usize,
    /// Commit and abort markers seen.
    pub commits: usize,
    pub aborts: usize,
}

/// Reads partition `partition` of `topic` from offset 0 up to its high watermark.
pub fn read(bootstrap: &str, topic: &str, partition: i32) -> Transactional {
    let mut sock = TcpStream::connect(bootstrap).expect("connect to the broker");
    let mut out = Transactional::default();
    let mut pending: HashMap<i64, Vec<Record>> = HashMap::new();
    let mut offset = 0i64;
    loop {
        let (hw, records) = fetch(&mut sock, topic, partition, offset);
        let mut buf = Buf(&records);
        let mut progressed = false;
        while buf.0.len() >= 12 {
            let batch_len = i32::from_be_bytes(buf.0[8..12].try_into().unwrap()) as usize;
            if buf.0.len() < 12 + batch_len {
                break; // a partial batch at the end of the response
            }
            let batch = Buf(&buf.0[..12 + batch_len]);
            buf.0 = &buf.0[12 + batch_len..];
            let base = batch.i64_at(0);
            assert_eq!(batch.0[16], 2, "record batch magic");
            let attrs = batch.i16_at(21);
            assert_eq!(attrs & 7, 0, "compressed batches are not supported");
            let last_delta = batch.i32_at(23) as i64;
            let producer = batch.i64_at(43);
            let count = batch.i32_at(57);
            let (transactional, control) = (attrs & 16 != 0, attrs & 32 != 0);
            let mut recs = Buf(&batch.0[61..]);
            let mut batch_records = Vec::new();
            for _ in 0..count {
                let len = recs.varint() as usize;
                let mut r = Buf(&recs.0[..len]);
                recs.0 = &recs.0[len..];
                r.0 = &r.0[1..]; // attributes
                r.varint(); // timestamp delta
                r.varint(); // offset delta
                let key = r.bytes();
                let value = r.bytes();
                batch_records.push((key, value));
            }
            if control {
                // Key: version (i16), type (i16): 0 abort, 1 commit.
                let key = batch_records[0].0.as_ref().expect("control key");
                let commit = i16::from_be_bytes([key[2], key[3]]) == 1;
                let held = pending.remove(&producer).unwrap_or_default();
                if commit {
                    out.commits += 1;
                    out.committed.extend(held);
                } else {
                    out.aborts += 1;
                    out.aborted += held.len();
                }
            } else if transactional {
                pending.entry(producer).or_default().extend(batch_records);
            } else {
                out.committed.extend(batch_records);
            }
            offset = base + last_delta + 1;
            progressed = true;
        }
        if offset >= hw {
            break;
        }
        assert!(
            progressed,
            "no complete batch at offset {offset} of {topic}"
        );
    }
    out.open = pending.values().map(Vec::len).sum();
    out
}

/// One Fetch v4 round trip: the partition's high watermark and its record bytes.
fn fetch(sock: &mut TcpStream, topic: &str, partition: i32, offset: i64) -> (i64, Vec<u8>) {
    let mut req = Vec::new();
    req.extend_from_slice(&1i16.to_be_bytes()); // api key: Fetch
    req.extend_from_slice(&4i16.to_be_bytes()); // version
    req.extend_from_slice(&1i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&(b"strom-test".len() as i16).to_be_bytes());
    req.extend_from_slice(b"strom-test");
    req.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    req.extend_from_slice(&100i32.to_be_bytes()); // max wait ms
    req.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    req.extend_from_slice(&(16i32 << 20).to_be_bytes()); // max bytes
    req.push(0); // isolation: read uncommitted (the markers are applied here)
    req.extend_from_slice(&1i32.to_be_bytes()); // one topic
    req.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    req.extend_from_slice(topic.as_bytes());
    req.extend_from_slice(&1i32.to_be_bytes()); // one partition
    req.extend_from_slice(&partition.to_be_bytes());
    req.extend_from_slice(&offset.to_be_bytes());
    req.extend_from_slice(&(8i32 << 20).to_be_bytes()); // partition max bytes
    sock.write_all(&(req.len() as i32).to_be_bytes()).unwrap();
    sock.write_all(&req).unwrap();
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut resp = vec![0u8; i32::from_be_bytes(len) as usize];
    sock.read_exact(&mut resp).unwrap();
    let mut b = Buf(&resp);
    b.take(4); // correlation id
    b.take(4); // throttle
    assert_eq!(b.i32(), 1, "one topic in the response");
    let name_len = b.i16() as usize;
    b.take(name_len);
    assert_eq!(b.i32(), 1, "one partition in the response");
    b.take(4); // partition
    let error = b.i16();
    assert_eq!(error, 0, "fetch error code for {topic}");
    let hw = b.i64();
    b.take(8); // last stable offset
    let aborted = b.i32();
    if aborted > 0 {
        b.take(16 * aborted as usize);
    }
    let n = b.i32().max(0) as usize;
    (hw, b.take(n).to_vec())
}

struct Buf<'a>(&'a [u8]);

impl<'a> Buf<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn i16_at(&self, at: usize) -> i16 {
        i16::from_be_bytes(self.0[at..at + 2].try_into().unwrap())
    }
    fn i32_at(&self, at: usize) -> i32 {
        i32::from_be_bytes(self.0[at..at + 4].try_into().unwrap())
    }
    fn i64_at(&self, at: usize) -> i64 {
        i64::from_be_bytes(self.0[at..at + 8].try_into().unwrap())
    }
    /// A zig-zag varint.
    fn varint(&mut self) -> i64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.take(1)[0];
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }
    /// A varint-length byte string (length -1: null).
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.varint();
        (n >= 0).then(|| self.take(n as usize).to_vec())
    }
}
