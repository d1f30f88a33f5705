//! The orchestrator of `sweep run`: the run loop, its pure decisions, the scheduler, the
//! executor that starts trials, the folder lock, progress display, signals.
//!
//! Never trains and never imports the trainer: trials are other processes, reached only
//! through `protocol`.

pub mod decide;
pub mod executor;
pub mod interrupt;
pub mod lock;
pub mod progress;
pub mod record;
pub mod reporter;
pub mod respond;
pub mod resume;
pub mod runner;
pub mod scheduler;
pub mod slurm;
