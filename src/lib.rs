//! sweep: hyperparameter sweeps for fine-tuning language models.
//!
//! See ARCHITECTURE.md for the map of modules. `main.rs` is a thin command line over this library.

pub mod batch;
pub mod chat;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod devices;
pub mod eval;
pub mod executor;
pub mod gpu;
pub mod gpu_check;
pub mod interrupt;
pub mod journal;
pub mod memory;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod plan;
pub mod presets;
pub mod progress;
pub mod report;
pub mod results;
pub mod resume;
pub mod rng;
pub mod runner;
pub mod scheduler;
pub mod search;
pub mod spec;
pub mod suggest;
pub mod tokenizer;
pub mod train;
pub mod trial;
