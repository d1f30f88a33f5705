//! sweep's end-to-end tests, in one test binary (one link of candle and polars, not one per file).

mod architecture;
mod check;
mod classifier;
mod cli;
mod common;
mod data_parallel;
mod export;
mod gpu_check;
mod gradients;
mod hf_reference;
mod levels;
mod model_families;
mod program;
mod report;
mod resources;
mod resume;
mod search;
mod shared_prefix;
mod slurm;
