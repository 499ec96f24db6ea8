//! etcd's range permission check (`server/auth/range_perm_cache.go` and the interval tree
//! of `pkg/adt`), over a user's merged permissions.
//!
//! Keys are compared as etcd's `BytesAffineComparable`: an empty byte string is +infinity.
//! A permission with an empty range end is the one key `[key, key\0)`; a range end of
//! `\0` ("from key") has no upper bound. A point request is allowed when one permission
//! holds the key; a range request when the permissions that intersect it cover it without
//! a gap, as etcd's `IntervalTree.Contains`.

use std::cmp::Ordering;

/// One granted interval `[begin, end)`; an empty `end` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    /// The interval of a permission as etcd stores it (`key`, `range_end`).
    pub(super) fn of_permission(key: &[u8], range_end: &[u8]) -> Interval {
        let end = match range_end {
            [] => point_end(key),
            [0] => Vec::new(),
            end => end.to_vec(),
        };
        Interval {
            begin: key.to_vec(),
            end,
        }
    }

    fn intersects(&self, begin: &[u8], end: &[u8]) -> bool {
        affine(&self.end, begin) == Ordering::Greater && affine(&self.begin, end) == Ordering::Less
    }
}

fn point_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    end.push(0);
    end
}

/// etcd's `BytesAffineComparable.Compare`: the empty string sorts after everything.
fn affine(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

/// Whether `granted` allows the request for `key` .. `range_end` (etcd's convention).
pub(super) fn covers(granted: &[Interval], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return granted.iter().any(|i| i.intersects(key, &point_end(key)));
    }
    let end: &[u8] = if range_end == [0] { &[] } else { range_end };
    let mut hits: Vec<&Interval> = granted.iter().filter(|i| i.intersects(key, end)).collect();
    hits.sort_by(|a, b| affine(&a.begin, &b.begin));
    let Some((first, rest)) = hits.split_first() else {
        return false;
    };
    let mut max_end = &first.end;
    for next in rest {
        if affine(max_end, &next.begin) == Ordering::Less {
            return false;
        }
        if affine(&next.end, max_end) == Ordering::Greater {
            max_end = &next.end;
        }
    }
    affine(max_end, end) != Ordering::Less && affine(&first.begin, key) != Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(perms: &[(&str, &str)]) -> Vec<Interval> {
        perms
            .iter()
            .map(|(k, e)| Interval::of_permission(k.as_bytes(), e.as_bytes()))
            .collect()
    }

    #[test]
    fn ranges_are_checked_as_etcd_does() {
        let g = grants(&[("a", "c"), ("c", "e"), ("k", ""), ("x", "\0")]);
        let cases: &[(&str, &str, bool)] = &[
            ("a", "", true),
            ("d", "", true),
            ("e", "", false),
            ("k", "", true),
            ("k0", "", false),
            // Adjacent grants cover a range across their boundary.
            ("a", "e", true),
            ("b", "d", true),
            ("a", "f", false),
            // A single-key grant covers only [k, k\0).
            ("k", "k\0", true),
            ("k", "l", false),
            // From-key grants and requests have no upper bound.
            ("x", "\0", true),
            ("y", "\0", true),
            ("y", "z", true),
            ("w", "\0", false),
            ("a", "\0", false),
        ];
        for (key, end, want) in cases {
            assert_eq!(
                covers(&g, key.as_bytes(), end.as_bytes()),
                *want,
                "{key:?}..{end:?}"
            );
        }
    }

    #[test]
    fn nothing_granted_allows_nothing() {
        assert!(!covers(&[], b"a", b""));
        assert!(!covers(&[], b"a", b"b"));
    }
}
