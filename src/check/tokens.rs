//! Lengths in tokens, measured exactly as training measures them (`text::encode::TokenCounts`
//! and `fit`, with the trial's own tokenizer), against every `max_seq_len` the
//! sweep uses. An answer that cannot fit is an error (it would be cut off and the trial would
//! fail); a prompt that loses tokens from its start is a warning with a count.

use std::collections::BTreeSet;

use super::data::DataFile;
use super::{CheckReport, Problem};
use crate::text::encode::{fit, Fit, TokenCounts};

/// The `max_seq_len` values the sweep's trials use, by kind of training sequence.
#[derive(Debug, Default, Clone)]
pub struct Lengths {
    /// sft and lora: prompt, then the answer that is trained.
    pub supervised: BTreeSet<usize>,
    /// post_pretrain: the text alone, cut at the end when too long.
    pub unsupervised: BTreeSet<usize>,
}

/// Checks every example of each file (its token counts beside it) against `lengths`.
pub fn check_lengths(
    files: &[(&DataFile, &TokenCounts)],
    lengths: &Lengths,
    report: &mut CheckReport,
) {
    for (file, counts) in files {
        if !lengths.supervised.is_empty() {
            check_supervised(file, counts, &lengths.supervised, report);
        }
        if !lengths.unsupervised.is_empty() {
            check_unsupervised(file, counts, &lengths.unsupervised, report);
        }
    }
}

fn check_supervised(
    file: &DataFile,
    counts: &TokenCounts,
    maxes: &BTreeSet<usize>,
    report: &mut CheckReport,
) {
    // Per max_seq_len: how many prompts lose tokens, and the longest example (line, tokens).
    let mut truncated: Vec<(usize, usize, usize)> = maxes.iter().map(|m| (*m, 0, 0)).collect();
    let mut longest: Vec<(usize, usize)> = vec![(0, 0); maxes.len()];
    let mut counted = 0;
    for ex in &counts.examples {
        let Some(labelled) = &ex.labelled else {
            continue;
        };
        let (prompt, answer) = match labelled {
            Ok(lengths) => *lengths,
            Err(e) => {
                report.push(
                    Problem::error(&file.file, format!("cannot tokenize: {e}"))
                        .at(Some(ex.line), None),
                );
                continue;
            }
        };
        counted += 1;
        let total = prompt + answer;
        let mut too_short = Vec::new();
        for (i, &max) in maxes.iter().enumerate() {
            match fit(prompt, answer, counts.has_bos, max) {
                Fit::AnswerTooLong => too_short.push(max),
                Fit::PromptCut(_) => {
                    truncated[i].1 += 1;
                    if total > longest[i].1 {
                        longest[i] = (ex.line, total);
                    }
                }
                Fit::Whole => {}
            }
        }
        if !too_short.is_empty() {
            let needed = answer + usize::from(counts.has_bos) + 1;
            let list: Vec<String> = too_short.iter().map(usize::to_string).collect();
            report.push(
                Problem::error(
                    &file.file,
                    format!(
                        "the answer takes {answer} tokens (with end-of-sequence); with bos and one prompt token it needs max_seq_len >= {needed}, but the sweep uses max_seq_len {}: the answer would be cut off",
                        list.join(", ")
                    ),
                )
                .at(Some(ex.line), None)
                .field("tgt")
                .hint(format!("raise max_seq_len to at least {needed}, or shorten this tgt")),
            );
        }
    }
    for ((max, n, _), (line, tokens)) in truncated.iter().zip(&longest) {
        if *n > 0 {
            report.push(
                Problem::warning(
                    &file.file,
                    format!(
                        "{n} of {counted} example(s) are longer than max_seq_len {max} and lose tokens from the start of the prompt; the longest, this one, has {tokens} tokens"
                    ),
                )
                .at(Some(*line), None)
                .hint(format!(
                    "fine if the start is boilerplate; raise max_seq_len to {tokens} to keep every prompt whole"
                )),
            );
        }
    }
}

fn check_unsupervised(
    file: &DataFile,
    counts: &TokenCounts,
    maxes: &BTreeSet<usize>,
    report: &mut CheckReport,
) {
    let mut cut = vec![0usize; maxes.len()];
    for ex in &counts.examples {
        let tokens = match &ex.text {
            Ok(n) => *n,
            Err(e) => {
                report.push(
                    Problem::error(&file.file, format!("cannot tokenize: {e}"))
                        .at(Some(ex.line), None),
                );
                continue;
            }
        };
        if tokens < 2 {
            report.push(
                Problem::error(&file.file, "the text gives no tokens with this tokenizer")
                    .at(Some(ex.line), None)
                    .field("src"),
            );
        }
        for (i, max) in maxes.iter().enumerate() {
            if tokens > *max {
                cut[i] += 1;
            }
        }
    }
    for (max, n) in maxes.iter().zip(cut) {
        if n > 0 {
            report.push(
                Problem::warning(
                    &file.file,
                    format!("{n} text(s) are longer than max_seq_len {max} and are cut at the end for post_pretrain"),
                )
                .hint("raise max_seq_len to train on the whole texts"),
            );
        }
    }
}
