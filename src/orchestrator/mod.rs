//! The orchestrator of `sweep run`: the run loop (`runner`, I/O only) and its responses to each
//! event (`respond`, pure), its other pure decisions (`decide`, `scheduler`), resume, the
//! executors that start trials, the folder lock, the reporters (progress bars or quiet), signals.
//!
//! Never trains and never imports the trainer: trials are other processes, reached only
//! through `protocol`.

pub mod decide;
pub mod executor;
pub mod interrupt;
pub mod lock;
pub mod program_host;
pub mod progress;
pub mod record;
pub mod reporter;
pub mod respond;
pub mod resume;
pub mod runner;
pub mod scheduler;
pub mod slurm;
