//! The key index: for every key, the revisions at which it changed, grouped
//! into generations (etcd `server/mvcc/key_index.go`, `index.go`).
//!
//! A generation is one life of a key: it starts with a put that creates the
//! key and ends with the tombstone that deletes it. The last generation of a
//! key is the open one; it is empty when the key is currently deleted.
//!
//! ```text
//! put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0) on key "foo":
//!   generations:
//!     {empty}
//!     {4.0, 5.0(t)}
//!     {1.0, 2.0, 3.0(t)}
//!
//! compact(2):  {empty} {4.0, 5.0(t)} {2.0, 3.0(t)}   // 1.0 dropped, 2.0 kept
//! compact(4):  {empty} {4.0, 5.0(t)}                 // generation ended by 3 dropped
//! compact(5):  {empty}  → the key leaves the index   // tombstone 5 ≤ 5
//! ```
//!
//! Invariants: revisions inside a key index strictly increase; every
//! generation but the last is non-empty and ends with a tombstone; compaction
//! only removes revisions at or below the compact revision, and never the
//! newest revision ≤ it of a generation that is still alive after it, so a
//! read at or above the compact revision sees the same answer before and
//! after compaction.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::revision::Revision;

/// One life of a key, from creation to (optionally) its tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of puts in this generation up to its last revision (the
    /// `version` of the newest value; survives compaction of early revisions).
    pub ver: i64,
    /// Main revision that created the key (its `create_revision`).
    pub created: i64,
    /// Revisions of this generation, ascending; the last one is the tombstone
    /// unless this is the key's open generation.
    pub revs: Vec<Revision>,
}

/// What the index knows about a key's visible value at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRev {
    /// Revision of the visible value (its `mod_revision` and storage key).
    pub modified: Revision,
    /// `create_revision` of the visible value.
    pub created: i64,
    /// `version` of the visible value.
    pub ver: i64,
}

/// Generations of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    /// Record a put at `rev`; starts a generation if the key is deleted.
    /// Returns the new value's `create_revision` and `version`.
    pub fn put(&mut self, rev: Revision) -> (i64, i64) {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("non-empty");
        if g.revs.is_empty() {
            g.created = rev.main;
        }
        g.revs.push(rev);
        g.ver += 1;
        (g.created, g.ver)
    }

    /// Rebuild a key from a stored value whose earlier history may have been
    /// compacted away (etcd `keyIndex.restore`).
    pub fn restore(created: i64, modified: Revision, ver: i64) -> Self {
        KeyIndex {
            generations: vec![Generation {
                ver,
                created,
                revs: vec![modified],
            }],
        }
    }

    /// Record a delete at `rev`: the tombstone ends the open generation.
    /// Returns false (and changes nothing) if the key is not alive.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        match self.generations.last() {
            Some(g) if !g.revs.is_empty() => {}
            _ => return false,
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// True when the index holds no revision at all (only an empty generation).
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.revs.is_empty())
    }

    /// The visible value at `at_rev`, if the key is alive there.
    pub fn get(&self, at_rev: i64) -> Option<KeyRev> {
        let g = self.find_generation(at_rev)?;
        let n = g.revs.iter().rposition(|r| r.main <= at_rev)?;
        Some(KeyRev {
            modified: g.revs[n],
            created: g.created,
            ver: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// The generation alive at `rev` (etcd `findGeneration`).
    fn find_generation(&self, rev: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if i != last && g.revs.last().expect("non-empty").main <= rev {
                return None;
            }
            if first.main <= rev {
                return Some(g);
            }
        }
        None
    }

    /// Every revision the index holds, ascending.
    pub fn revisions(&self) -> impl Iterator<Item = Revision> + '_ {
        self.generations.iter().flat_map(|g| g.revs.iter().copied())
    }

    /// Drop history at or below `at_rev` (etcd `keyIndex.compact`): whole
    /// generations whose tombstone is ≤ `at_rev`, and in the generation that
    /// is alive at `at_rev` every revision older than the newest one ≤
    /// `at_rev`. Returns the removed revisions (all ≤ `at_rev`), which the
    /// caller deletes from storage.
    pub fn compact(&mut self, at_rev: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            if g.revs.last().expect("closed generation").main > at_rev {
                break;
            }
            gen_idx += 1;
        }
        for g in self.generations.drain(..gen_idx) {
            removed.extend(g.revs);
        }
        let is_last = self.generations.len() == 1;
        let g = &mut self.generations[0];
        if let Some(keep) = g.revs.iter().rposition(|r| r.main <= at_rev) {
            removed.extend(g.revs.drain(..keep));
            // A closed generation reduced to its tombstone is dead history.
            if g.revs.len() == 1 && !is_last {
                removed.extend(self.generations.remove(0).revs);
            }
        }
        removed
    }
}

/// Every key's index, ordered by key (etcd `treeIndex`).
#[derive(Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

/// The upper end of a key range, in etcd's terms.
#[derive(Debug, Clone, Copy)]
pub enum RangeEnd<'a> {
    /// `range_end` empty: just `key`.
    Single,
    /// `range_end` "\0": every key ≥ `key`.
    Unbounded,
    /// `[key, end)`.
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    /// etcd's `mkGteRange` plus the single-key case.
    pub fn from_request(range_end: &'a [u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        }
    }
}

impl TreeIndex {
    pub fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyRev> {
        self.keys.get(key)?.get(at_rev)
    }

    /// Record a put of `key` at `rev`, newer than any revision the index
    /// holds; returns the new value's `create_revision` and `version`. One
    /// lookup, and the key is copied only when it is new to the index.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> (i64, i64) {
        if let Some(ki) = self.keys.get_mut(key) {
            return ki.put(rev);
        }
        self.keys.entry(key.to_vec()).or_default().put(rev)
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    /// Insert a key rebuilt from storage (see [`KeyIndex::restore`]).
    pub fn restore(&mut self, key: &[u8], created: i64, modified: Revision, ver: i64) {
        match self.keys.get_mut(key) {
            Some(ki) => {
                ki.put(modified);
            }
            None => {
                self.keys
                    .insert(key.to_vec(), KeyIndex::restore(created, modified, ver));
            }
        }
    }

    /// Visit `(key, index)` over a range, in key order.
    fn visit<'s>(
        &'s self,
        key: &[u8],
        end: RangeEnd<'_>,
    ) -> Box<dyn Iterator<Item = (&'s Vec<u8>, &'s KeyIndex)> + 's> {
        match end {
            RangeEnd::Single => Box::new(self.keys.get_key_value(key).into_iter()),
            RangeEnd::Unbounded => Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(key), Bound::Unbounded)),
            ),
            RangeEnd::Before(end) if end <= key => Box::new(std::iter::empty()),
            RangeEnd::Before(end) => Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(key), Bound::Excluded(end))),
            ),
        }
    }

    /// Visible `(key, KeyRev)` pairs at `at_rev`, at most `limit` of them when
    /// `limit > 0`, plus the number of visible keys in the whole range
    /// (etcd `treeIndex.Revisions`).
    pub fn revisions(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, KeyRev)>, i64) {
        let mut out = Vec::new();
        let mut total = 0;
        for (k, ki) in self.visit(key, end) {
            if let Some(kr) = ki.get(at_rev) {
                if limit == 0 || out.len() < limit {
                    out.push((k.clone(), kr));
                }
                total += 1;
            }
        }
        (out, total)
    }

    /// Keys in `[first key after cursor ..]`, at most `n` (compaction chunks).
    pub fn keys_after(&self, cursor: Option<&[u8]>, n: usize) -> Vec<Vec<u8>> {
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        self.keys
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(n)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Appends to `out` the revision visible at `at_rev` (see
    /// [`KeyIndex::get`]) of each of at most `n` keys after `cursor`, in key
    /// order; returns the cursor to continue from, `None` at the end.
    pub fn visible_after(
        &self,
        cursor: Option<&[u8]>,
        at_rev: i64,
        n: usize,
        out: &mut Vec<Revision>,
    ) -> Option<Vec<u8>> {
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let mut last: Option<&Vec<u8>> = None;
        for (i, (k, ki)) in self
            .keys
            .range::<[u8], _>((lower, Bound::Unbounded))
            .enumerate()
        {
            if i == n {
                return last.cloned();
            }
            if let Some(kr) = ki.get(at_rev) {
                out.push(kr.modified);
            }
            last = Some(k);
        }
        None
    }

    /// Compact one key; drops it from the index once nothing is left.
    pub fn compact_key(&mut self, key: &[u8], at_rev: i64) -> Vec<Revision> {
        let Some(ki) = self.keys.get_mut(key) else {
            return Vec::new();
        };
        let removed = ki.compact(at_rev);
        if ki.is_empty() {
            self.keys.remove(key);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    #[cfg(test)]
    pub fn key_index(&self, key: &[u8]) -> Option<&KeyIndex> {
        self.keys.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// The key of the module example: 1, 2, 3(t), 4, 5(t).
    fn foo() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(1));
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        ki.put(r(4));
        assert!(ki.tombstone(r(5)));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = foo();
        assert_eq!(ki.get(0), None);
        let at1 = ki.get(1).unwrap();
        assert_eq!((at1.modified, at1.created, at1.ver), (r(1), 1, 1));
        let at2 = ki.get(2).unwrap();
        assert_eq!((at2.modified, at2.created, at2.ver), (r(2), 1, 2));
        assert_eq!(ki.get(3), None);
        let at4 = ki.get(4).unwrap();
        assert_eq!((at4.modified, at4.created, at4.ver), (r(4), 4, 1));
        assert_eq!(ki.get(5), None);
        assert_eq!(ki.get(100), None);
    }

    #[test]
    fn tombstone_needs_live_key() {
        let mut ki = KeyIndex::default();
        assert!(!ki.tombstone(r(1)));
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.tombstone(r(4)));
    }

    #[test]
    fn sub_revisions_inside_one_main() {
        let mut ki = KeyIndex::default();
        ki.put(Revision::new(2, 0));
        ki.put(Revision::new(2, 1));
        let kr = ki.get(2).unwrap();
        assert_eq!((kr.modified, kr.ver), (Revision::new(2, 1), 2));
        assert!(ki.tombstone(Revision::new(3, 0)));
        ki.put(Revision::new(3, 1));
        let kr = ki.get(3).unwrap();
        assert_eq!(
            (kr.modified, kr.created, kr.ver),
            (Revision::new(3, 1), 3, 1)
        );
    }

    #[test]
    fn compaction_keep_set() {
        let mut ki = foo();
        assert_eq!(ki.compact(1), vec![]);
        assert_eq!(ki.compact(2), vec![r(1)]);
        assert_eq!(ki.get(2).unwrap().ver, 2);
        assert_eq!(ki.compact(3), vec![r(2), r(3)]);
        assert_eq!(ki.get(4).unwrap().modified, r(4));
        assert_eq!(ki.compact(4), vec![]);
        assert_eq!(ki.compact(5), vec![r(4), r(5)]);
        assert!(ki.is_empty());
    }

    #[test]
    fn compaction_keeps_newest_live_value() {
        let mut ki = KeyIndex::default();
        for m in 2..=6 {
            ki.put(r(m));
        }
        assert_eq!(ki.compact(4), vec![r(2), r(3)]);
        let kr = ki.get(4).unwrap();
        assert_eq!((kr.modified, kr.created, kr.ver), (r(4), 2, 3));
        assert_eq!(ki.get(6).unwrap().ver, 5);
        assert_eq!(ki.compact(100), vec![r(4), r(5)]);
        assert_eq!(ki.get(100).unwrap().modified, r(6));
    }

    #[test]
    fn tree_put_returns_created_and_version() {
        let mut t = TreeIndex::default();
        assert_eq!(t.put(b"a", r(2)), (2, 1));
        assert_eq!(t.put(b"a", r(3)), (2, 2));
        assert_eq!(t.put(b"b", r(4)), (4, 1));
        assert!(t.tombstone(b"a", r(5)));
        assert_eq!(t.put(b"a", r(6)), (6, 1), "a new generation");
        assert_eq!(t.put(b"a", Revision::new(6, 1)), (6, 2));
        let kr = t.get(b"a", 6).unwrap();
        assert_eq!(
            (kr.modified, kr.created, kr.ver),
            (Revision::new(6, 1), 6, 2)
        );
        t.restore(b"c", 7, r(9), 4);
        assert_eq!(t.put(b"c", r(10)), (7, 5), "continues a restored key");
    }

    #[test]
    fn tree_ranges_and_counts() {
        let mut t = TreeIndex::default();
        t.put(b"a", r(2));
        t.put(b"b", r(3));
        t.put(b"c", r(4));
        assert!(t.tombstone(b"b", r(5)));
        let keys = |v: Vec<(Vec<u8>, KeyRev)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let (v, n) = t.revisions(b"a", RangeEnd::Unbounded, 5, 0);
        assert_eq!((keys(v), n), (vec![b"a".to_vec(), b"c".to_vec()], 2));
        let (v, n) = t.revisions(b"a", RangeEnd::Before(b"c"), 4, 1);
        assert_eq!((keys(v), n), (vec![b"a".to_vec()], 2));
        let (v, n) = t.revisions(b"c", RangeEnd::Before(b"a"), 4, 0);
        assert_eq!((v.len(), n), (0, 0));
        let (v, n) = t.revisions(b"b", RangeEnd::Single, 5, 0);
        assert_eq!((v.len(), n), (0, 0));
        assert_eq!(t.compact_key(b"b", 5), vec![r(3), r(5)]);
        assert_eq!(t.len(), 2);
    }
}
