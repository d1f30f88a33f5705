//! Text to token ids, through the `tokenizers` crate.
//!
//! A model folder's `tokenizer.json` is used as is. Without one (the built-in presets), a
//! byte-level BPE vocabulary is learned from the training text with the `tokenizers` crate's own
//! trainer, so a fresh machine needs no download and any script works: every CJK character is
//! split off on its own before the merges, and a character never seen in training falls back to
//! its UTF-8 bytes, so nothing is unknown. It is saved as an ordinary `tokenizer.json` beside
//! every checkpoint.

use std::collections::HashMap;
use std::path::Path;

use crate::spec::ModelSource;
use crate::text::data::Example;
use crate::text::model_folder::read_config;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    SplitDelimiterBehavior, Tokenizer,
};

/// The vocabulary a preset's tokenizer learns at most (specials, 256 bytes and merges). Merges
/// stop earlier when no pair occurs twice.
pub const SUBWORD_VOCAB: usize = 16384;

/// One piece per CJK ideograph or kana (BERT's rule), so that Chinese or Japanese text, written
/// without spaces, is never one long "word" to the byte-level pieces.
const CJK: &str = r"[\p{Han}\p{Hiragana}\p{Katakana}]";

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

    /// Learns a byte-level BPE vocabulary of at most `vocab_size` tokens from `texts`: lower-cased,
    /// every CJK character split off on its own (BERT's rule, so Chinese is never one long
    /// "word"), then GPT-2's byte-level pieces and merges of pairs seen at least twice. All 256
    /// bytes are in the vocabulary, so any text encodes without an unknown token. Identical texts
    /// are learned from once (a system prompt repeated on every line would otherwise crowd out
    /// the queries); the same texts give the same ids.
    pub fn build_subword<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        vocab_size: usize,
    ) -> Result<Self, TokenizerError> {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&str> = texts.into_iter().filter(|t| seen.insert(*t)).collect();
        let encode_err = |e: tokenizers::Error| TokenizerError::Encode(e.to_string());
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_normalizer(Some(Lowercase));
        let cjk = Split::new(
            SplitPattern::Regex(CJK.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(encode_err)?;
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            cjk.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevel::new(false, true, true)));
        let specials: Vec<AddedToken> = [PAD, UNK, BOS, EOS]
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        let trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .min_frequency(2)
            .vocab_size(vocab_size)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        inner
            .train(&mut trainer, unique.into_iter())
            .map_err(encode_err)?;
        let id = |name: &str| {
            inner
                .token_to_id(name)
                .ok_or_else(|| TokenizerError::Encode(format!("no {name} after training")))
        };
        Ok(Self {
            bos: Some(id(BOS)?),
            eos: id(EOS)?,
            pad: id(PAD)?,
            inner,
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

/// The tokenizer a trial uses: for a preset, a subword vocabulary learned from the training
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
            TextTokenizer::build_subword(texts, SUBWORD_VOCAB)
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

    #[test]
    fn subword_tokenizer_splits_chinese_and_knows_every_character() {
        let texts = [
            "你精通query分类，请判断下面这个query属于哪一类。",
            "合租室友带人回来长期住",
            "生活和情感",
            "生活和情感",
            "说说生活和情感",
            "Book a flight to Paris",
            "book_flight",
        ];
        let tok = TextTokenizer::build_subword(texts, 500).unwrap();
        assert_eq!((tok.pad, tok.bos, tok.eos), (0, Some(2), 3));
        // Characters never seen in training (and emoji) still encode, to bytes, never to <unk>.
        for text in [
            "生活和情感",
            "什么材质的衬衫比较有质感 🙂",
            "zebra crossing",
            "BOOK_FLIGHT",
        ] {
            let ids = tok.encode(text).unwrap();
            assert!(!ids.is_empty() && !ids.contains(&1), "{text}: {ids:?}");
            assert_eq!(
                tok.decode(&ids).replace(' ', ""),
                text.to_lowercase().replace(' ', "")
            );
        }
        // A Chinese sentence is never one token: each character is split off before the merges,
        // and a character seen twice is one token.
        assert!(tok.encode("合租室友带人回来长期住").unwrap().len() >= 11);
        assert_eq!(tok.encode("生活和情感").unwrap().len(), 5);
        let again = TextTokenizer::build_subword(texts, 500).unwrap();
        assert_eq!(
            again.encode("合租室友 book a flight").unwrap(),
            tok.encode("合租室友 book a flight").unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = TextTokenizer::from_file(&path, None, None, None).unwrap();
        assert_eq!(
            back.encode("什么材质 flight").unwrap(),
            tok.encode("什么材质 flight").unwrap()
        );
        assert_eq!((back.bos, back.eos, back.pad), (Some(2), 3, 0));
    }
}
