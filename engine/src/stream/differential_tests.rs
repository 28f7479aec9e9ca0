//! Differential tests of the operator cores: random insert/update/delete workloads (with
//! NULLs, duplicates, deletes of the current extreme), after which the operator's
//! accumulated output must equal the same query computed from scratch over the current
//! input.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;

use super::chunk::{Op, StreamChunk};
use super::hash_agg::{AggCall, AggKind, HashAgg};
use super::hash_join::{HashJoin, JoinType, Side};
use crate::state::tests::{spill, temp_alloc};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An int in [-3, 3] or NULL (1 in 6).
    fn small(&mut self) -> ScalarValue {
        if self.below(6) == 0 {
            ScalarValue::Int64(None)
        } else {
            ScalarValue::Int64(Some(self.below(7) as i64 - 3))
        }
    }
}

type Row = Vec<ScalarValue>;

fn schema(n: usize) -> SchemaRef {
    Arc::new(Schema::new(
        (0..n)
            .map(|i| Field::new(format!("c{i}"), DataType::Int64, true))
            .collect::<Vec<_>>(),
    ))
}

/// A random batch of changes to `rows` (keyed by their first column, a unique id).
fn random_changes(
    rng: &mut Rng,
    rows: &mut HashMap<i64, Row>,
    next_id: &mut i64,
    width: usize,
) -> Vec<(Op, Row)> {
    let mut out = Vec::new();
    for _ in 0..rng.below(6) + 1 {
        let pick = rows
            .keys()
            .copied()
            .nth(rng.below(rows.len().max(1) as u64) as usize);
        match (rng.below(3), pick) {
            (0, Some(id)) => {
                let old = rows.remove(&id).expect("picked id exists");
                out.push((Op::Delete, old));
            }
            (1, Some(id)) => {
                let old = rows[&id].clone();
                let mut new = old.clone();
                let c = 1 + rng.below(width as u64 - 1) as usize;
                new[c] = rng.small();
                rows.insert(id, new.clone());
                out.push((Op::UpdateDelete, old));
                out.push((Op::UpdateInsert, new));
            }
            _ => {
                *next_id += 1;
                let mut row = vec![ScalarValue::Int64(Some(*next_id))];
                row.extend((1..width).map(|_| rng.small()));
                rows.insert(*next_id, row.clone());
                out.push((Op::Insert, row));
            }
        }
    }
    out
}

/// Folds a change stream into a multiset.
fn accumulate(view: &mut HashMap<Row, i64>, chunk: &StreamChunk) {
    for (op, row) in chunk.rows().unwrap() {
        let n = view.entry(row.clone()).or_insert(0);
        *n += op.sign();
        assert!(
            *n >= 0,
            "the operator retracted a row it never emitted: {row:?}"
        );
        if *n == 0 {
            view.remove(&row);
        }
    }
}

fn multiset(rows: impl IntoIterator<Item = Row>) -> HashMap<Row, i64> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(r).or_insert(0) += 1;
    }
    m
}

/// The rows' `c2` values grouped by `c1` (the workloads' `GROUP BY c1` over `c2`).
fn c2_by_c1<'a>(rows: impl IntoIterator<Item = &'a Row>) -> HashMap<Option<i64>, Vec<Option<i64>>> {
    let mut groups: HashMap<Option<i64>, Vec<Option<i64>>> = HashMap::new();
    for r in rows {
        groups.entry(int(&r[1])).or_default().push(int(&r[2]));
    }
    groups
}

fn int(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int64(x) => *x,
        _ => None,
    }
}

#[test]
fn hash_agg_matches_from_scratch_grouping() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15));
        // SELECT c1, count(*), count(c2), sum(c2), min(c2), max(c2) FROM t GROUP BY c1
        let calls = vec![
            AggCall {
                kind: AggKind::CountStar,
                arg: None,
                filter: None,
                output_type: DataType::Int64,
                general: None,
            },
            AggCall {
                kind: AggKind::Count,
                arg: Some(2),
                filter: None,
                output_type: DataType::Int64,
                general: None,
            },
            AggCall {
                kind: AggKind::Sum,
                arg: Some(2),
                filter: None,
                output_type: DataType::Int64,
                general: None,
            },
            AggCall {
                kind: AggKind::Min,
                arg: Some(2),
                filter: None,
                output_type: DataType::Int64,
                general: None,
            },
            AggCall {
                kind: AggKind::Max,
                arg: Some(2),
                filter: None,
                output_type: DataType::Int64,
                general: None,
            },
        ];
        let (_dir, mut alloc) = temp_alloc();
        let mut agg = HashAgg::try_new(
            &schema(3),
            vec![1],
            calls,
            schema(6),
            None,
            false,
            &mut alloc,
        )
        .unwrap();
        let (mut rows, mut next_id, mut view) = (HashMap::new(), 0, HashMap::new());
        for _ in 0..60 {
            let changes = random_changes(&mut rng, &mut rows, &mut next_id, 3);
            agg.apply(&StreamChunk::from_rows(&schema(3), &changes).unwrap())
                .unwrap();
            accumulate(&mut view, &agg.flush().unwrap());
            if rng.below(2) == 0 {
                spill(alloc.store(), agg.state_tables());
            }

            let expected = multiset(c2_by_c1(rows.values()).into_iter().map(|(g, vs)| {
                let present: Vec<i64> = vs.iter().flatten().copied().collect();
                vec![
                    ScalarValue::Int64(g),
                    ScalarValue::Int64(Some(vs.len() as i64)),
                    ScalarValue::Int64(Some(present.len() as i64)),
                    ScalarValue::Int64((!present.is_empty()).then(|| present.iter().sum())),
                    ScalarValue::Int64(present.iter().min().copied()),
                    ScalarValue::Int64(present.iter().max().copied()),
                ]
            }));
            assert_eq!(view, expected, "seed {seed}");
        }
    }
}

#[test]
fn hash_join_matches_from_scratch_for_every_join_type() {
    for join_type in [
        JoinType::Inner,
        JoinType::Left,
        JoinType::Right,
        JoinType::Full,
    ] {
        // Rows stored by row, and by their unique `id` (state version 5).
        for (seed, by_key) in (1..=10u64).flat_map(|s| [(s, None), (s, Some(vec![0]))]) {
            let mut rng = Rng(seed.wrapping_mul(0xD1B54A32D192ED03) | 1);
            // L(id, k, v) JOIN R(id, k, w) ON L.k = R.k
            let (_dir, mut alloc) = temp_alloc();
            let mut join = HashJoin::try_new(
                join_type,
                vec![1],
                vec![1],
                &schema(3),
                &schema(3),
                None,
                false,
                [None, None],
                [by_key.clone(), by_key.clone()],
                &mut alloc,
            )
            .unwrap();
            let (mut l, mut r) = (HashMap::new(), HashMap::new());
            let (mut next_id, mut view) = (0, HashMap::new());
            for step in 0..60 {
                let side = if rng.below(2) == 0 {
                    Side::Left
                } else {
                    Side::Right
                };
                let rows = if side == Side::Left { &mut l } else { &mut r };
                let changes = random_changes(&mut rng, rows, &mut next_id, 3);
                let out = join
                    .apply(side, &StreamChunk::from_rows(&schema(3), &changes).unwrap())
                    .unwrap();
                accumulate(&mut view, &out);
                if rng.below(2) == 0 {
                    spill(alloc.store(), join.state_tables());
                }

                let nulls = vec![ScalarValue::Int64(None); 3];
                let matches = |a: &Row, b: &Row| int(&a[1]).is_some() && int(&a[1]) == int(&b[1]);
                let mut expected = Vec::new();
                for a in l.values() {
                    let mut any = false;
                    for b in r.values().filter(|b| matches(a, b)) {
                        any = true;
                        expected.push([a.clone(), b.clone()].concat());
                    }
                    if !any && matches!(join_type, JoinType::Left | JoinType::Full) {
                        expected.push([a.clone(), nulls.clone()].concat());
                    }
                }
                if matches!(join_type, JoinType::Right | JoinType::Full) {
                    for b in r.values().filter(|b| !l.values().any(|a| matches(a, b))) {
                        expected.push([nulls.clone(), b.clone()].concat());
                    }
                }
                assert_eq!(
                    view,
                    multiset(expected),
                    "{join_type:?} seed {seed} by key {by_key:?} step {step}"
                );
            }
        }
    }
}

/// Append-only input: `min`/`max` keep one value per group in the main row (no multiset),
/// and must still equal the from-scratch result, across spills and reloads of the state,
/// with NULL inputs, ties, and groups whose values are all NULL.
#[test]
fn append_only_hash_agg_matches_from_scratch() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0xA24BAED4963EE407) | 1);
        // SELECT c1, count(*), min(c2), max(c2), max(c2) FILTER (WHERE c3 = true)
        // FROM t GROUP BY c1 (c3 is `c2 > 0`, computed into a boolean column)
        let call = |kind, arg, filter| AggCall {
            kind,
            arg,
            filter,
            output_type: DataType::Int64,
            general: None,
        };
        let calls = vec![
            call(AggKind::CountStar, None, None),
            call(AggKind::Min, Some(2), None),
            call(AggKind::Max, Some(2), None),
            call(AggKind::Max, Some(2), Some(3)),
        ];
        let input = Arc::new(Schema::new(vec![
            Field::new("c0", DataType::Int64, true),
            Field::new("c1", DataType::Int64, true),
            Field::new("c2", DataType::Int64, true),
            Field::new("c3", DataType::Boolean, true),
        ]));
        let (_dir, mut alloc) = temp_alloc();
        let mut agg =
            HashAgg::try_new(&input, vec![1], calls, schema(5), None, true, &mut alloc).unwrap();
        assert_eq!(
            agg.state_tables().len(),
            1,
            "append-only min/max need no table beside the main one"
        );
        let (mut rows, mut next_id, mut view) = (Vec::<Row>::new(), 0i64, HashMap::new());
        for step in 0..60 {
            let mut batch = Vec::new();
            for _ in 0..rng.below(12) + 1 {
                next_id += 1;
                let (k, v) = (rng.small(), rng.small());
                let positive = ScalarValue::Boolean(int(&v).map(|v| v > 0));
                let row = vec![ScalarValue::Int64(Some(next_id)), k, v, positive];
                rows.push(row.clone());
                batch.push((Op::Insert, row));
            }
            agg.apply(&StreamChunk::from_rows(&input, &batch).unwrap())
                .unwrap();
            accumulate(&mut view, &agg.flush().unwrap());
            if rng.below(2) == 0 {
                spill(alloc.store(), agg.state_tables());
            }

            let expected = multiset(c2_by_c1(&rows).into_iter().map(|(g, vs)| {
                let present: Vec<i64> = vs.iter().flatten().copied().collect();
                vec![
                    ScalarValue::Int64(g),
                    ScalarValue::Int64(Some(vs.len() as i64)),
                    ScalarValue::Int64(present.iter().min().copied()),
                    ScalarValue::Int64(present.iter().max().copied()),
                    ScalarValue::Int64(present.iter().filter(|&&v| v > 0).max().copied()),
                ]
            }));
            assert_eq!(view, expected, "seed {seed} step {step}");
        }
        // A delete cannot be folded into a kept extreme: it is refused, not absorbed.
        let row = rows[0].clone();
        let err = agg
            .apply(&StreamChunk::from_rows(&input, &[(Op::Delete, row)]).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}
