//! Text: data files, chat templates, tokenizers, and the encoding of examples into token ids.
//!
//! The only code that turns examples into token ids. Knows nothing about tensors, devices,
//! processes or results.

pub mod chat;
pub mod data;
pub mod encode;
pub mod model_folder;
pub mod tokenizer;
