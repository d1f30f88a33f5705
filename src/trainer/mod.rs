//! The trainer: one trial's model, batches, loss, optimizer, evaluation, checkpoints and resume
//! points, run by `sweep train TRIAL_DIR` in its own process.
//!
//! The only code that uses candle. Knows nothing about other trials, the journal or the pool.

pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod evaluate;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod optim;
pub mod parallel;
pub mod probe;
pub mod resume;
pub mod step;
pub mod stop;
pub mod train;
