//! "Did you mean ...?": the candidate nearest to a misspelt name.

/// The candidate nearest to `unknown`, if one is close enough to be the same word typed
/// badly: at most three edits, and fewer than a third of the word's length.
pub(crate) fn nearest<'a>(
    unknown: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(unknown, c), c))
        .filter(|(d, c)| *d <= 3 && *d * 3 <= c.len().max(unknown.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting an adjacent transposition (`cuont` -> `count`) as one edit
/// (optimal string alignment), since swapped letters are a common typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: distance between the first i chars of a and the first j of b.
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        for (a, b, want) in [
            ("cuont", "count", 1),
            ("", "abc", 3),
            ("abc", "abc", 0),
            ("kitten", "sitting", 3),
            ("data_dir", "data-dir", 1),
        ] {
            assert_eq!(edit_distance(a, b), want, "{a} {b}");
        }
    }

    #[test]
    fn nearest_prefers_the_closest_and_refuses_far_ones() {
        let names = ["cert-file", "key-file", "auto-tls"];
        assert_eq!(nearest("cert-fiel", names.into_iter()), Some("cert-file"));
        assert_eq!(nearest("kye-file", names.into_iter()), Some("key-file"));
        assert_eq!(nearest("tls", names.into_iter()), None);
    }
}
