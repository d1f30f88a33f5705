//! Pure numbers over finished work: classification metrics (accuracy, macro-F1, per-class
//! precision/recall/F1, confusions) and parameter importance. Shared by the trainer (`sweep eval`,
//! `sweep predict`, a trial's dev predictions) and results (the report), so it may use neither
//! candle nor polars.
//!
//! **No I/O, no tensors, no tables; imports nothing but the standard library and serde.**

pub mod classify;
pub mod importance;
