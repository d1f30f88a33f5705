//! The trainer's one error type: every failure of a trial, naming the file or setting at fault.

use std::path::{Path, PathBuf};

use crate::protocol::trial::ReadError;
use crate::text::data::DataError;
use crate::text::encode::FileEncodeError;
use crate::text::tokenizer::TokenizerError;
use crate::trainer::model::ModelError;
use crate::trainer::parallel::ParallelError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Encode(#[from] FileEncodeError),
    #[error(transparent)]
    Protocol(#[from] ReadError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file sweep reads that does not hold what it should.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Device(String),
    /// A setting the trainer cannot use (a benchmark's method, say).
    #[error("{0}")]
    Setting(String),
    #[error("loss became {loss} at step {step} (learning rate {lr:.3e} too high?)")]
    Diverged { loss: f64, step: usize, lr: f64 },
    #[error("unknown model preset `{0}`")]
    UnknownPreset(String),
    #[error("no epoch ran")]
    NoEpoch,
    /// Stopped on the pre-timeout signal with a resume point at this step (`trainer::stop`).
    #[error("saved a resume point at step {step} (epoch {epoch}) on the pre-timeout signal")]
    SavedOnSignal { epoch: u32, step: usize },
    /// The progress stream's reader (the sweep that started the trial) is gone: the trial stops
    /// rather than train unseen; `sweep run --resume` continues from its last resume point.
    #[error("the sweep that started this trial is gone; stopping")]
    OrchestratorGone,
    /// The trainer's code panicked (a bug, or a thread that could not start).
    #[error("the trainer panicked: {0}")]
    Panicked(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// `?` on file operations with the path in the error.
pub trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> AtPath<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl<T> AtPath<T> for serde_json::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| TrainError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// A `TrainError::File` about `path`.
pub fn bad_file(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
