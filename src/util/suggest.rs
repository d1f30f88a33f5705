//! "Did you mean ...?": the closest known word to a misspelt key, value or field name.
//!
//! Shared by the spec parser (distribution names) and the checker (keys, parameter names, data
//! fields), so every message suggests corrections the same way.

/// The known word closest to `word`, if it is close enough to be a likely typo.
///
/// Close enough means an edit distance of at most a third of the word's length (at least 1),
/// ignoring case, `-`/`_` differences; an alias table for well-known names from other tools
/// (`lr`, `num_epochs`, ...) is consulted by the callers, not here.
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace('-', "_");
    let w = norm(word);
    if w.is_empty() {
        return None;
    }
    let budget = (w.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(&w, &norm(k)), *k))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// `" (did you mean `x`?)"`, or nothing: ready to append to a message.
pub fn suffix(word: &str, known: &[&str]) -> String {
    did_you_mean(word, known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// Edit distance counting an adjacent transposition (`gird` for `grid`) as one edit, the
/// commonest typo (optimal string alignment). Inputs are short keys; words longer than 64
/// characters are compared on their first 64, which bounds the work any input can cause.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * width + j] + 1)
                    .min(d[i * width + j - 1] + 1)
                    .min(d[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let known = ["learning_rate", "epochs", "batch_size", "metric"];
        assert_eq!(did_you_mean("lerning_rate", &known), Some("learning_rate"));
        assert_eq!(did_you_mean("metrics", &known), Some("metric"));
        assert_eq!(did_you_mean("Batch-Size", &known), Some("batch_size"));
        assert_eq!(did_you_mean("zebra", &known), None);
        assert_eq!(did_you_mean("", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(did_you_mean("gird", &["grid", "random"]), Some("grid"));
    }
}
