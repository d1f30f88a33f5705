//! Text to token ids, through the `tokenizers` crate.
//!
//! A model folder's `tokenizer.json` is used as is. Without one (the built-in presets), a
//! word-level vocabulary is built from the training text, so a fresh machine needs no download;
//! it is saved as an ordinary `tokenizer.json` beside every checkpoint.

use std::collections::HashMap;
use std::path::Path;

use crate::spec::ModelSource;
use crate::text::data::Example;
use crate::text::model_folder::read_config;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{file}: {message}")]
    Load { file: String, message: String },
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error(transparent)]
    Folder(#[from] crate::text::model_folder::ModelFolderError),
}

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";

/// A tokenizer and the special ids training needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
    /// The model folder's chat template, which then renders prompts and answers.
    pub chat: Option<crate::text::chat::ChatTemplate>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; special ids come from the model config when it names them.
    pub fn from_file(
        path: &Path,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        let lookup = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos = eos
            .or_else(|| lookup(&[EOS, "</s>", "<|endoftext|>", "<|im_end|>", "<eos>"]))
            .ok_or_else(|| TokenizerError::Load {
                file: path.display().to_string(),
                message: "no end-of-sequence token: set eos_token_id in config.json".into(),
            })?;
        let bos = bos.or_else(|| lookup(&[BOS, "<s>"]));
        let pad = pad.or_else(|| lookup(&[PAD, "<|padding|>"])).unwrap_or(eos);
        let chat = match path.parent() {
            Some(dir) => crate::text::chat::ChatTemplate::from_folder(dir).map_err(|e| {
                TokenizerError::Load {
                    file: dir.display().to_string(),
                    message: e.to_string(),
                }
            })?,
            None => None,
        };
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            chat,
        })
    }

    /// Builds a lower-cased word-level vocabulary (words and punctuation) from `texts`.
    /// Words are ordered by frequency, then alphabetically, so the same text gives the same ids.
    pub fn build_word_level<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        min_count: usize,
    ) -> Result<Self, TokenizerError> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            for word in pre_tokenize(text)? {
                *counts.entry(word).or_default() += 1;
            }
        }
        // Punctuation is always present, so labels such as `book_flight` never lose their `_`.
        for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".chars() {
            counts.entry(c.to_string()).or_insert(min_count);
        }
        let mut words: Vec<(String, usize)> = counts
            .into_iter()
            .filter(|(_, c)| *c >= min_count)
            .collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let specials = [PAD, UNK, BOS, EOS];
        let mut vocab = serde_json::Map::new();
        for (i, s) in specials.iter().enumerate() {
            vocab.insert((*s).to_string(), serde_json::json!(i));
        }
        for (word, _) in words {
            if !vocab.contains_key(&word) {
                let id = vocab.len();
                vocab.insert(word, serde_json::json!(id));
            }
        }
        let added: Vec<serde_json::Value> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        });
        let inner: Tokenizer = json
            .to_string()
            .parse()
            .map_err(|e: tokenizers::Error| TokenizerError::Encode(e.to_string()))?;
        Ok(Self {
            inner,
            bos: Some(2),
            eos: 3,
            pad: 0,
            chat: None,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner
            .save(path, false)
            .map_err(|e| TokenizerError::Load {
                file: path.display().to_string(),
                message: e.to_string(),
            })
    }
}

/// The words the word-level tokenizer sees: lower-cased, split on white space and punctuation.
fn pre_tokenize(text: &str) -> Result<Vec<String>, TokenizerError> {
    let lower = text.to_lowercase();
    let mut pts = PreTokenizedString::from(lower.as_str());
    BertPreTokenizer
        .pre_tokenize(&mut pts)
        .map_err(|e| TokenizerError::Encode(e.to_string()))?;
    Ok(pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

/// The tokenizer a trial uses: for a preset, a word-level vocabulary built from the training
/// text (every turn of it); for a model folder, its `tokenizer.json` with the special ids of its
/// config.json. Shared with the checker, which measures lengths with the very same tokenizer.
pub fn load_tokenizer(
    source: &ModelSource,
    train: &[Example],
) -> Result<TextTokenizer, TokenizerError> {
    match source {
        ModelSource::Preset(_) => {
            let texts = train.iter().flat_map(|e| {
                e.history
                    .iter()
                    .flat_map(|(q, a)| [q.as_str(), a.as_str()])
                    .chain(
                        [e.system.as_deref(), Some(e.src.as_str()), e.tgt.as_deref()]
                            .into_iter()
                            .flatten(),
                    )
            });
            TextTokenizer::build_word_level(texts, 1)
        }
        ModelSource::Path(dir) => {
            // Only the special ids are needed here, so config.json is read without the weights.
            let config = read_config(dir)?;
            let tok_path = dir.join("tokenizer.json");
            if !tok_path.exists() {
                return Err(TokenizerError::Load {
                    file: dir.display().to_string(),
                    message: "no tokenizer.json in the model folder".into(),
                });
            }
            let tokenizer = TextTokenizer::from_file(
                &tok_path,
                config.bos_token_id,
                config.eos_token_id,
                config.pad_token_id,
            )?;
            if tokenizer.vocab_size() > config.vocab_size {
                return Err(TokenizerError::Load {
                    file: tok_path.display().to_string(),
                    message: format!(
                        "the tokenizer has {} tokens but config.json's vocab_size is {}",
                        tokenizer.vocab_size(),
                        config.vocab_size
                    ),
                });
            }
            Ok(tokenizer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_level_round_trip_through_tokenizer_json() {
        let tok =
            TextTokenizer::build_word_level(["Book a flight", "book_flight please", "a a a"], 1)
                .unwrap();
        let ids = tok.encode("book a FLIGHT book_flight zebra").unwrap();
        assert_eq!(ids.len(), 7);
        assert_eq!(ids[0], ids[3]);
        assert_eq!(ids[6], 1, "unknown words map to <unk>");
        // "a" is the most frequent word, so it gets the first id after the specials.
        assert_eq!(tok.encode("a").unwrap(), vec![4]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = TextTokenizer::from_file(&path, None, None, None).unwrap();
        assert_eq!(back.encode("book a FLIGHT book_flight zebra").unwrap(), ids);
        assert_eq!((back.bos, back.eos, back.pad), (Some(2), 3, 0));
        assert_eq!(back.vocab_size(), tok.vocab_size());
    }
}
