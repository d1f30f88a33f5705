//! The protocol between the orchestrator and a trial process, and the results folder's layout:
//! the trial's config.json, its progress events, its result.json, the journal's events. Every
//! file format and path that two stages share is defined here, once.
//!
//! Knows nothing about tensors, processes or tables.

pub mod evaluation;
pub mod journal;
pub mod program;
pub mod trial;
