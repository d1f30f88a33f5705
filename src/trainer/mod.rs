//! The trainer: one trial's model, batches, loss, optimizer, evaluation, checkpoints and resume
//! points, run by `sweep train TRIAL_DIR` in its own process; and a saved checkpoint put to use
//! (`sweep eval`, `sweep predict`, `sweep export`).
//!
//! The only code that uses candle.
//!
//! It must not: know about other trials, the journal, the pool of devices or the sweep file (a
//! trial reads its own folder: config.json in; metrics.jsonl, checkpoint/, resume/ and
//! result.json out); start processes; or decide what happens after a trial ends (retries, early
//! termination, ranking are the orchestrator's). What a trial tells the world goes through its
//! event sink (`train::sink`), and how it ended leaves it as a kind (`train::end`), never as text
//! for the orchestrator to read.
//!
//! Modules:
//! - `train`: one trial as steps (`load`, `trial`: optimizer step, evaluation, best checkpoint,
//!   resume point, epoch), its `schedule`, its event `sink`, its `end`, and the `oom_guard` that
//!   records a CPU trial's allocation failure.
//! - `model`: our Llama/Qwen2 decoder with Hugging Face tensor names, LoRA; `ops`: fused CPU
//!   operations with their own backward; `batch`: padded batches and per-token loss.
//! - `step`: a batch's gradients in micro-batches; `parallel`: data-parallel replicas and the
//!   optimizer step (`Replicas::step`, the one training takes and `bench` times); `optim`: AdamW,
//!   schedule, clipping.
//! - `head`: the head methods' classification head (`classifier`, `classifier_lora`): its loss
//!   over each prompt's last token and its evaluation, one forward per example.
//! - `scoring`: dev loss and candidate-label scores (a trial's evaluation); `checkpoint_eval`: a
//!   saved checkpoint loaded and scored (`sweep eval`, `sweep predict`).
//! - `checkpoint`: HF and PEFT folders, merge; `resume`: resume points; `stop`: the pre-timeout
//!   signal.
//! - `gpu`: what differs on CUDA; `bench`: timed optimizer steps on random tokens; `probe`: the
//!   candle work `sweep gpu-check` (src/diagnostics/) asks for; `error`: the trainer's one error
//!   type.

pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod checkpoint_eval;
pub mod error;
pub mod gpu;
pub mod head;
pub mod model;
pub mod ops;
pub mod optim;
pub mod parallel;
pub mod probe;
pub mod resume;
pub mod scoring;
pub mod step;
pub mod stop;
pub mod train;
