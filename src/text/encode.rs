//! Examples into token ids: the prompt and answer of a labelled example (through the model's chat
//! template when it has one), truncation, and unlabelled text. Training, scoring and the checker's
//! length checks all encode through here, so they can never disagree.

use std::path::{Path, PathBuf};

use crate::spec::params::Method;
use crate::text::chat::Turn;
use crate::text::data::{render_answer, render_conversation, Example};
use crate::text::tokenizer::{TextTokenizer, TokenizerError};

/// A token sequence whose tokens from `loss_from` on are predicted (and count in the loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    pub ids: Vec<u32>,
    pub loss_from: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(
        "line {line}: the answer alone takes {answer} tokens, more than max_seq_len {max} allows"
    )]
    AnswerTooLong {
        line: usize,
        answer: usize,
        max: usize,
    },
    #[error("line {line}: no tokens")]
    Empty { line: usize },
    #[error("line {line}: tgt: missing; method {method} needs labelled examples")]
    Unlabelled { line: usize, method: &'static str },
}

/// Prompt ids for an example (bos, then the rendered prompt with any earlier turns), shared by
/// training, scoring and the checker's length checks.
pub fn prompt_ids(tok: &TextTokenizer, ex: &Example) -> Result<Vec<u32>, TokenizerError> {
    if let Some(chat) = &tok.chat {
        // The template places bos and every special token itself.
        let mut turns = Vec::new();
        if let Some(system) = ex.system.as_deref().filter(|s| !s.is_empty()) {
            turns.push(Turn {
                role: "system",
                content: system,
            });
        }
        for (query, answer) in &ex.history {
            turns.push(Turn {
                role: "user",
                content: query,
            });
            turns.push(Turn {
                role: "assistant",
                content: answer,
            });
        }
        turns.push(Turn {
            role: "user",
            content: &ex.src,
        });
        let prompt = chat
            .render(&turns, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        return tok.encode(&prompt);
    }
    let mut ids: Vec<u32> = tok.bos.into_iter().collect();
    ids.extend(tok.encode(&render_conversation(
        ex.system.as_deref(),
        &ex.history,
        &ex.src,
    ))?);
    Ok(ids)
}

/// Answer ids: the answer text, then end-of-sequence.
pub fn answer_ids(tok: &TextTokenizer, tgt: &str) -> Result<Vec<u32>, TokenizerError> {
    if let Some(chat) = &tok.chat {
        // The assistant turn as the template writes it (its end-of-turn token included). Chat
        // templates render it the same whatever came before, so any short prompt serves.
        let (_, answer) = chat
            .split(
                &[Turn {
                    role: "user",
                    content: "?",
                }],
                tgt,
            )
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        return tok.encode(&answer);
    }
    let mut ids = tok.encode(&render_answer(tgt))?;
    ids.push(tok.eos);
    Ok(ids)
}

/// How a prompt of `prompt` tokens and an answer of `answer` tokens fit in `max` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    Whole,
    /// This many prompt tokens just after bos are dropped.
    PromptCut(usize),
    /// Not even one prompt token (after bos) would be left.
    AnswerTooLong,
}

/// The truncation rule, on lengths alone: what `supervised` does and the checker predicts.
pub fn fit(prompt: usize, answer: usize, has_bos: bool, max: usize) -> Fit {
    let total = prompt + answer;
    if total <= max {
        return Fit::Whole;
    }
    let cut = total - max;
    if prompt < usize::from(has_bos) + cut + 1 {
        Fit::AnswerTooLong
    } else {
        Fit::PromptCut(cut)
    }
}

/// Prompt + answer, the loss on the answer only. Too-long sequences lose prompt tokens just
/// after bos (the start of the system text), never the query's end or the answer.
pub fn supervised(
    prompt: &[u32],
    answer: &[u32],
    has_bos: bool,
    max: usize,
    line: usize,
) -> Result<Seq, EncodeError> {
    let keep_head = usize::from(has_bos);
    let total = prompt.len() + answer.len();
    let mut ids = Vec::with_capacity(total.min(max));
    match fit(prompt.len(), answer.len(), has_bos, max) {
        Fit::Whole => ids.extend_from_slice(prompt),
        Fit::PromptCut(cut) => {
            ids.extend_from_slice(&prompt[..keep_head]);
            ids.extend_from_slice(&prompt[keep_head + cut..]);
        }
        Fit::AnswerTooLong => {
            return Err(EncodeError::AnswerTooLong {
                line,
                answer: answer.len(),
                max,
            })
        }
    }
    let loss_from = ids.len();
    ids.extend_from_slice(answer);
    Ok(Seq { ids, loss_from })
}

/// Unlabelled text for causal-LM training: every token after the first is predicted.
pub fn unsupervised(
    tok: &TextTokenizer,
    text: &str,
    max: usize,
    line: usize,
) -> Result<Seq, EncodeError> {
    let mut ids: Vec<u32> = tok.bos.into_iter().collect();
    ids.extend(tok.encode(text)?);
    ids.push(tok.eos);
    ids.truncate(max);
    if ids.len() < 2 {
        return Err(EncodeError::Empty { line });
    }
    Ok(Seq { ids, loss_from: 1 })
}

/// Token sequences for training or dev loss: answer-only loss for sft/lora, all-token loss on
/// the text (`src`) for post_pretrain. Errors name the file and line.
pub fn encode_all(
    examples: &[Example],
    tok: &TextTokenizer,
    method: Method,
    max_len: usize,
    file: &Path,
) -> Result<Vec<Seq>, FileEncodeError> {
    let in_file = |source: EncodeError| FileEncodeError {
        file: file.to_path_buf(),
        source,
    };
    examples
        .iter()
        .map(|ex| match (method, &ex.tgt) {
            (Method::PostPretrain, _) => unsupervised(tok, &ex.src, max_len, ex.line),
            // The head methods read the prompt alone (no answer tokens): its last token's hidden
            // state meets the head; cut as a prompt before an answer would be.
            (m, Some(_)) if m.is_head() => supervised(
                &prompt_ids(tok, ex)?,
                &[],
                tok.bos.is_some(),
                max_len,
                ex.line,
            ),
            (_, Some(tgt)) => supervised(
                &prompt_ids(tok, ex)?,
                &answer_ids(tok, tgt)?,
                tok.bos.is_some(),
                max_len,
                ex.line,
            ),
            (_, None) => Err(EncodeError::Unlabelled {
                line: ex.line,
                method: method.as_str(),
            }),
        })
        .map(|seq| seq.map_err(in_file))
        .collect()
}

/// Every example's length in tokens under one tokenizer. The checker measures it (against every
/// `max_seq_len`) and hands it to the planner (memory estimates), so a run tokenizes its
/// training set once.
#[derive(Debug)]
pub struct TokenCounts {
    /// The tokenizer's vocabulary size (a preset's embedding is sized by it).
    pub vocab_size: usize,
    pub has_bos: bool,
    pub examples: Vec<ExampleTokens>,
    /// Prompt tokens every labelled example starts with (bos and the system prompt), short of
    /// each prompt's last token: what shared-prefix training computes once per micro-batch.
    pub shared_prefix: usize,
}

#[derive(Debug)]
pub struct ExampleTokens {
    pub line: usize,
    /// (prompt, answer) tokens of a labelled example.
    pub labelled: Option<Result<(usize, usize), TokenizerError>>,
    /// `src` as unlabelled text: bos, the text, eos, before truncation.
    pub text: Result<usize, TokenizerError>,
}

impl TokenCounts {
    pub fn measure(tok: &TextTokenizer, examples: &[Example]) -> Self {
        let mut first_prompt: Option<Vec<u32>> = None;
        let mut shared_prefix = usize::MAX;
        let mut share = |ids: &[u32]| {
            let first = first_prompt.get_or_insert_with(|| ids.to_vec());
            let common = first.iter().zip(ids).take_while(|(a, b)| a == b).count();
            shared_prefix = shared_prefix.min(common).min(ids.len().saturating_sub(1));
        };
        let examples = examples
            .iter()
            .map(|ex| ExampleTokens {
                line: ex.line,
                labelled: ex.tgt.as_ref().map(|tgt| {
                    let prompt = prompt_ids(tok, ex)?;
                    share(&prompt);
                    Ok((prompt.len(), answer_ids(tok, tgt)?.len()))
                }),
                text: tok
                    .encode(&ex.src)
                    .map(|ids| ids.len() + usize::from(tok.bos.is_some()) + 1),
            })
            .collect();
        Self {
            vocab_size: tok.vocab_size(),
            has_bos: tok.bos.is_some(),
            examples,
            shared_prefix: if shared_prefix == usize::MAX {
                0
            } else {
                shared_prefix
            },
        }
    }

    /// The longest example in tokens, before truncation: prompt and answer when labelled, else
    /// the text.
    pub fn longest(&self) -> usize {
        self.examples
            .iter()
            .filter_map(|e| match &e.labelled {
                Some(Ok((p, a))) => Some(p + a),
                Some(Err(_)) => None,
                None => e.text.as_ref().ok().copied(),
            })
            .max()
            .unwrap_or(0)
    }

    /// The first tokenizer error, naming its line.
    pub fn first_error(&self) -> Option<(usize, &TokenizerError)> {
        self.examples.iter().find_map(|e| {
            let labelled = e.labelled.as_ref().and_then(|l| l.as_ref().err());
            labelled.or(e.text.as_ref().err()).map(|err| (e.line, err))
        })
    }
}

/// An `EncodeError` in a named data file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", file.display())]
pub struct FileEncodeError {
    pub file: PathBuf,
    #[source]
    pub source: EncodeError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_on_lengths_agrees_with_truncating_the_ids() {
        for prompt in 1..8usize {
            for answer in 1..5usize {
                for max in 2..12usize {
                    for has_bos in [false, true] {
                        let p: Vec<u32> = (0..prompt as u32).collect();
                        let a: Vec<u32> = (100..100 + answer as u32).collect();
                        let seq = supervised(&p, &a, has_bos, max, 1);
                        match fit(prompt, answer, has_bos, max) {
                            Fit::Whole => assert_eq!(seq.unwrap().ids.len(), prompt + answer),
                            Fit::PromptCut(cut) => {
                                assert_eq!(seq.unwrap().ids.len(), prompt + answer - cut)
                            }
                            Fit::AnswerTooLong => assert!(seq.is_err()),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn truncation_keeps_answer_and_query_end() {
        let prompt = [100, 1, 2, 3, 4, 5];
        let answer = [7, 8, 99];
        let s = supervised(&prompt, &answer, true, 6, 1).unwrap();
        assert_eq!(s.ids, vec![100, 4, 5, 7, 8, 99]);
        assert_eq!(s.loss_from, 3);
        assert!(matches!(
            supervised(&prompt, &answer, true, 3, 9),
            Err(EncodeError::AnswerTooLong { line: 9, .. })
        ));
    }

    /// A head reads the hidden state of the prompt's last token: a prompt longer than
    /// `max_seq_len` must lose the start of its system text, never the query or the `Answer:`
    /// the head reads (a prompt cut at its end would leave a head nothing to tell queries apart).
    #[test]
    fn a_head_method_s_long_prompt_keeps_bos_the_query_and_its_last_token() {
        let tok = TextTokenizer::build_word_level(
            ["intents alarm apr balance bill query set an alarm answer : \n"],
            1,
        )
        .unwrap();
        let ex = Example {
            system: Some("intents alarm apr balance bill alarm apr balance bill".into()),
            src: "set an alarm".into(),
            tgt: Some("alarm".into()),
            history: Vec::new(),
            line: 4,
        };
        let whole = prompt_ids(&tok, &ex).unwrap();
        let tail = tok.encode("query: set an alarm\nanswer:").unwrap();
        let max = tail.len() + 3;
        assert!(whole.len() > max, "the prompt must be cut for this test");
        for method in [Method::Classifier, Method::ClassifierLora] {
            let seqs =
                encode_all(std::slice::from_ref(&ex), &tok, method, max, Path::new("t")).unwrap();
            let ids = &seqs[0].ids;
            assert_eq!(ids.len(), max, "{method:?}");
            assert_eq!(ids[0], tok.bos.unwrap(), "{method:?}: bos stays");
            assert!(
                ids.ends_with(&tail),
                "{method:?}: {ids:?} lost the query's end"
            );
            assert_eq!(seqs[0].loss_from, ids.len(), "{method:?}: no answer tokens");
        }
    }

    #[test]
    fn a_chat_template_renders_prompt_and_answer_that_join_into_the_conversation() {
        let mut tok = TextTokenizer::build_word_level(
            ["system user assistant end classify the query book a flight book_flight"],
            1,
        )
        .unwrap();
        let template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} end {% endfor %}{% if add_generation_prompt %}assistant {% endif %}";
        tok.chat = Some(crate::text::chat::ChatTemplate::new(template, "", "", "t").unwrap());
        let ex = Example {
            system: Some("classify the query".into()),
            src: "book a flight".into(),
            tgt: Some("book_flight".into()),
            history: Vec::new(),
            line: 1,
        };
        let prompt = prompt_ids(&tok, &ex).unwrap();
        let answer = answer_ids(&tok, "book_flight").unwrap();
        let whole = tok
            .encode(
                "system classify the query end user book a flight end assistant book_flight end",
            )
            .unwrap();
        assert_eq!([prompt.clone(), answer.clone()].concat(), whole);
        assert_eq!(tok.decode(&answer), "book _ flight end");
        assert!(
            !prompt.contains(&tok.bos.unwrap()),
            "the template, not sweep, places bos"
        );
    }
}
