//! [`SmallMap`]: the map of a cached state bucket, by suffix, in suffix order.

use std::collections::BTreeMap;

/// Entries at most kept in a sorted vector; one more turns it into a `BTreeMap`.
const SMALL: usize = 32;

/// A map from byte-string keys to `V`, in key order. Most state buckets hold one or a few
/// entries (an aggregate group's row, the rows of one join key, the changed suffixes of
/// either): those live in a sorted vector, found by binary search, which allocates once
/// for its first entry, where a `BTreeMap` allocates and zeroes a node of about 560 bytes.
/// Nexmark q7 keeps one bucket per bid price, so that node was most of its state's memory
/// and a tenth of its CPU. A map that grows past [`SMALL`] entries becomes a `BTreeMap`
/// (and stays one), so large buckets keep logarithmic inserts.
#[derive(Debug, Clone)]
pub enum SmallMap<V> {
    Small(Vec<(Vec<u8>, V)>),
    Large(BTreeMap<Vec<u8>, V>),
}

impl<V> Default for SmallMap<V> {
    fn default() -> Self {
        SmallMap::new()
    }
}

impl<V> SmallMap<V> {
    pub const fn new() -> Self {
        SmallMap::Small(Vec::new())
    }

    pub fn len(&self) -> usize {
        match self {
            SmallMap::Small(v) => v.len(),
            SmallMap::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        match self {
            SmallMap::Small(v) => v
                .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                .ok()
                .map(|i| &v[i].1),
            SmallMap::Large(m) => m.get(key),
        }
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        match self {
            SmallMap::Small(v) => match v.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            SmallMap::Large(m) => m.get_mut(key),
        }
    }

    /// Sets `key` to `value`; returns the value it replaced. The key is copied only when
    /// it is new.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        match self {
            SmallMap::Small(v) => match v.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) if v.len() < SMALL => {
                    v.insert(i, (key.to_vec(), value));
                    None
                }
                Err(_) => {
                    let mut m: BTreeMap<Vec<u8>, V> = std::mem::take(v).into_iter().collect();
                    m.insert(key.to_vec(), value);
                    *self = SmallMap::Large(m);
                    None
                }
            },
            SmallMap::Large(m) => match m.get_mut(key) {
                Some(slot) => Some(std::mem::replace(slot, value)),
                None => m.insert(key.to_vec(), value),
            },
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        match self {
            SmallMap::Small(v) => v
                .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                .ok()
                .map(|i| v.remove(i).1),
            SmallMap::Large(m) => m.remove(key),
        }
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, V> {
        match self {
            SmallMap::Small(v) => Iter::Small(v.iter()),
            SmallMap::Large(m) => Iter::Large(m.iter()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The keys in order, taking the map apart.
    pub fn into_keys(self) -> Vec<Vec<u8>> {
        match self {
            SmallMap::Small(v) => v.into_iter().map(|(k, _)| k).collect(),
            SmallMap::Large(m) => m.into_keys().collect(),
        }
    }
}

/// The entries of a [`SmallMap`] in key order.
pub enum Iter<'a, V> {
    Small(std::slice::Iter<'a, (Vec<u8>, V)>),
    Large(std::collections::btree_map::Iter<'a, Vec<u8>, V>),
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Vec<u8>, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(i) => i.next().map(|(k, v)| (k, v)),
            Iter::Large(i) => i.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Small(i) => i.size_hint(),
            Iter::Large(i) => i.size_hint(),
        }
    }
}

impl<'a, V> IntoIterator for &'a SmallMap<V> {
    type Item = (&'a Vec<u8>, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inserts and removes across the switch to a `BTreeMap` give what a
    /// `BTreeMap` gives, in the same order.
    #[test]
    fn behaves_like_a_btree_map_across_the_switch() {
        let mut ours: SmallMap<u32> = SmallMap::new();
        let mut model: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..5000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct keys at first, so replacements and removes of present keys
            // happen; more later, so the map grows past the small form.
            let range = if step < 2000 { 40 } else { 400 };
            let key = format!("k{}", x % range).into_bytes();
            if x.is_multiple_of(3) {
                assert_eq!(ours.remove(&key), model.remove(&key), "remove {key:?}");
            } else {
                assert_eq!(ours.insert(&key, step), model.insert(key.clone(), step));
            }
            assert_eq!(ours.len(), model.len());
            assert_eq!(ours.get(&key), model.get(&key));
            if step.is_multiple_of(97) {
                let a: Vec<_> = ours.iter().map(|(k, v)| (k.clone(), *v)).collect();
                let b: Vec<_> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
                assert_eq!(a, b, "at step {step}");
            }
        }
        assert!(
            matches!(ours, SmallMap::Large(_)),
            "grew past the small form"
        );
        assert_eq!(
            ours.clone().into_keys(),
            model.keys().cloned().collect::<Vec<_>>()
        );
        // Small form only, through into_keys too.
        let mut small: SmallMap<()> = SmallMap::new();
        for k in [b"c".as_slice(), b"a", b"b", b"a"] {
            small.insert(k, ());
        }
        assert!(matches!(small, SmallMap::Small(_)));
        assert!(small.contains_key(b"b") && !small.contains_key(b"d"));
        assert_eq!(
            small.into_keys(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }
}
