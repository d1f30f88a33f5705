//! Token sequences and padded batches, and the per-token loss that training and evaluation share.

use candle_core::{Device, Tensor, D};

use crate::chat::Turn;
use crate::data::{render_answer, render_conversation, Example};
use crate::model::CausalLm;
use crate::tokenizer::{TextTokenizer, TokenizerError};

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
    if total > max {
        let cut = total - max;
        if prompt.len() < keep_head + cut + 1 {
            return Err(EncodeError::AnswerTooLong {
                line,
                answer: answer.len(),
                max,
            });
        }
        ids.extend_from_slice(&prompt[..keep_head]);
        ids.extend_from_slice(&prompt[keep_head + cut..]);
    } else {
        ids.extend_from_slice(prompt);
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

/// A right-padded batch. Inputs are ids[..n-1]; the loss counts the targets ids[t+1] at the
/// positions listed in `positions` (flat indices into batch x width), and only those.
pub struct Batch {
    pub inputs: Tensor,
    /// Flat (row * width + t) index of every counted position, u32.
    pub positions: Tensor,
    /// The target token at each counted position, u32.
    pub targets: Tensor,
    /// Which sequence of the batch each counted position belongs to.
    pub rows: Vec<usize>,
    /// Counted target tokens.
    pub tokens: usize,
    /// Non-pad input tokens (for throughput).
    pub input_tokens: usize,
}

pub fn make_batch(seqs: &[&Seq], pad: u32, device: &Device) -> candle_core::Result<Batch> {
    let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(2).max(2) - 1;
    let mut inputs = Vec::with_capacity(seqs.len() * width);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    let mut input_tokens = 0;
    for (row, s) in seqs.iter().enumerate() {
        let n = s.ids.len();
        input_tokens += n.saturating_sub(1);
        for t in 0..width {
            inputs.push(if t < n { s.ids[t] } else { pad });
            if t + 1 < n && t + 1 >= s.loss_from {
                positions.push((row * width + t) as u32);
                targets.push(s.ids[t + 1]);
                rows.push(row);
            }
        }
    }
    let tokens = positions.len();
    Ok(Batch {
        inputs: Tensor::from_vec(inputs, (seqs.len(), width), device)?,
        positions: Tensor::from_vec(positions, tokens, device)?,
        targets: Tensor::from_vec(targets, tokens, device)?,
        rows,
        tokens,
        input_tokens,
    })
}

/// Negative log-likelihood of the target at every counted position: shape (tokens,).
pub fn token_nll(model: &CausalLm, batch: &Batch) -> candle_core::Result<Tensor> {
    let hidden = model.hidden_states(&batch.inputs)?;
    let (b, t, h) = hidden.dims3()?;
    let counted = hidden
        .reshape((b * t, h))?
        .index_select(&batch.positions, 0)?;
    let logits = model.logits(&counted)?;
    // Half-precision logits are normalised in f32: bf16's 8 bits of mantissa would blur the loss.
    let logits = match logits.dtype() {
        candle_core::DType::BF16 | candle_core::DType::F16 => {
            logits.to_dtype(candle_core::DType::F32)?
        }
        _ => logits,
    };
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    logp.gather(&batch.targets.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_chat_template_renders_prompt_and_answer_that_join_into_the_conversation() {
        let mut tok = TextTokenizer::build_word_level(
            ["system user assistant end classify the query book a flight book_flight"],
            1,
        )
        .unwrap();
        let template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} end {% endfor %}{% if add_generation_prompt %}assistant {% endif %}";
        tok.chat = Some(crate::chat::ChatTemplate::new(template, "", "", "t").unwrap());
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

    #[test]
    fn batch_counts_answer_positions_only() {
        let a = Seq {
            ids: vec![1, 2, 3, 4],
            loss_from: 2,
        };
        let b = Seq {
            ids: vec![1, 5, 6],
            loss_from: 2,
        };
        let bt = make_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            bt.inputs.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3], vec![1, 5, 6]]
        );
        // a predicts 3 (at t=1) and 4 (t=2); b predicts 6 (t=1); nothing else counts.
        assert_eq!(bt.positions.to_vec1::<u32>().unwrap(), vec![1, 2, 4]);
        assert_eq!(bt.targets.to_vec1::<u32>().unwrap(), vec![3, 4, 6]);
        assert_eq!(bt.rows, vec![0, 0, 1]);
        assert_eq!(bt.tokens, 3);
        assert_eq!(bt.input_tokens, 5);
    }
}
