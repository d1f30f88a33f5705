//! sweep: hyperparameter sweeps for fine-tuning language models.
//!
//! One folder per stage, and `diagnostics` (`sweep gpu-check`) above them all; ARCHITECTURE.md
//! is the map, with what each folder must not do. `main.rs` is a thin command line over this
//! library.

pub mod check;
pub mod diagnostics;
pub mod orchestrator;
pub mod plan;
pub mod program_trial;
pub mod protocol;
pub mod results;
pub mod spec;
pub mod stats;
pub mod text;
pub mod trainer;
pub mod util;
