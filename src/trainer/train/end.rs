//! How a trial ended, as a kind: the trainer's errors turned into `protocol::trial::TrialEnd`.
//!
//! The trial alone reads the text of what failed inside it (candle's, cudarc's, cuBLAS's, an
//! allocation failure's) and says what kind of end it was, so the orchestrator matches on the
//! kind and never on a message.

use crate::protocol::trial::TrialEnd;
use crate::trainer::error::TrainError;
use crate::trainer::model::ModelError;

/// How an error says the memory ran out: CUDA's, cuBLAS's and cuRAND's as candle 0.11 prints
/// them (cudarc 0.19's `DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")`,
/// `CublasError(CUBLAS_STATUS_ALLOC_FAILED)`, `CurandError(..)`), Rust's allocation failure
/// (what a CPU trial under its memory limit prints before aborting) and the system's ENOMEM.
pub const OUT_OF_MEMORY_MARKERS: [&str; 6] = [
    "CUDA_ERROR_OUT_OF_MEMORY",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CURAND_STATUS_ALLOCATION_FAILED",
    "out of memory",
    "memory allocation of",
    "Cannot allocate memory",
];

/// Whether a failure's text says the memory ran out (`OUT_OF_MEMORY_MARKERS`).
pub fn says_out_of_memory(text: &str) -> bool {
    OUT_OF_MEMORY_MARKERS.iter().any(|m| text.contains(m))
}

/// An error and its causes, as `anyhow` prints them with `{:#}`: `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        // A transparent wrapper repeats its inner error's text; say it once.
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// The end of a trial that failed with `error` while running at micro-batch `micro_batch`.
///
/// Stopped: the pre-timeout signal (with the step of the resume point it saved) and an
/// orchestrator that went away. Invalid input: what running again cannot change (data, tokenizer,
/// trial config, model folder, a setting). Out of memory: any other error whose text says so.
/// Internal error: the rest (a diverged loss, a device that would not open, a bug).
pub fn end_of(error: &TrainError, micro_batch: u32) -> TrialEnd {
    let message = error_chain(error);
    match error {
        TrainError::SavedOnSignal { step, .. } => TrialEnd::Stopped {
            message,
            resume_step: Some(*step),
        },
        TrainError::OrchestratorGone => TrialEnd::Stopped {
            message,
            resume_step: None,
        },
        TrainError::Data(_)
        | TrainError::Tokenizer(_)
        | TrainError::Encode(_)
        | TrainError::Protocol(_)
        | TrainError::File { .. }
        | TrainError::Setting(_)
        | TrainError::UnknownPreset(_) => TrialEnd::InvalidInput { message },
        TrainError::Model(model) if !matches!(model, ModelError::Candle(_)) => {
            TrialEnd::InvalidInput { message }
        }
        TrainError::Diverged { .. } | TrainError::NoEpoch => TrialEnd::InternalError { message },
        _ if says_out_of_memory(&message) => TrialEnd::OutOfMemory {
            micro_batch,
            message,
        },
        _ => TrialEnd::InternalError { message },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn candles_cuda_errors_are_out_of_memory_only_when_they_say_so() {
        // candle 0.11 wraps cudarc 0.19's errors transparently, and cudarc's Display is its Debug:
        // the enum variant and, for the driver, cuGetErrorString's text.
        for oom in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "building one model replica per device: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"<Failure when calling cuGetErrorString()>\")",
            "CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "CurandError(CURAND_STATUS_ALLOCATION_FAILED)",
            "Cannot allocate memory (os error 12)",
        ] {
            assert!(says_out_of_memory(oom), "{oom}");
        }
        for not_oom in [
            "DriverError(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, \"too many resources requested for launch\")",
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")",
            "cannot open cuda:0: DriverError(CUDA_ERROR_STUB_LIBRARY, \"<Failure when calling cuGetErrorString()>\")",
            "CublasError(CUBLAS_STATUS_EXECUTION_FAILED)",
            "loss became NaN at step 3",
        ] {
            assert!(!says_out_of_memory(not_oom), "{not_oom}");
        }
    }

    use super::*;
    use crate::protocol::trial::ReadError;
    use crate::text::tokenizer::TokenizerError;
    use crate::trainer::parallel::ParallelError;
    use std::path::PathBuf;

    fn kind(end: &TrialEnd) -> &'static str {
        match end {
            TrialEnd::Finished { .. } => "finished",
            TrialEnd::Pruned { .. } => "pruned",
            TrialEnd::OutOfMemory { .. } => "out_of_memory",
            TrialEnd::Stopped { .. } => "stopped",
            TrialEnd::InvalidInput { .. } => "invalid_input",
            TrialEnd::InternalError { .. } => "internal_error",
        }
    }

    fn candle(message: &str) -> candle_core::Error {
        candle_core::Error::Msg(message.to_string())
    }

    #[test]
    fn device_and_allocation_failures_are_out_of_memory_at_the_trials_micro_batch() {
        let cases = [
            TrainError::Candle(candle(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            )),
            TrainError::Candle(candle("CublasError(CUBLAS_STATUS_ALLOC_FAILED)")),
            TrainError::Model(ModelError::Candle(candle(
                "CurandError(CURAND_STATUS_ALLOCATION_FAILED)",
            ))),
            TrainError::Parallel(ParallelError::Candle(candle(
                "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"<Failure when calling cuGetErrorString()>\")",
            ))),
            TrainError::Io {
                path: PathBuf::from("/t/checkpoint"),
                source: std::io::Error::from_raw_os_error(libc::ENOMEM),
            },
        ];
        for error in cases {
            match end_of(&error, 8) {
                TrialEnd::OutOfMemory {
                    micro_batch,
                    message,
                } => {
                    assert_eq!(micro_batch, 8);
                    assert!(says_out_of_memory(&message), "{message}");
                }
                other => panic!("{error}: {other:?}"),
            }
        }
        let panicked = |m: &str| TrainError::Panicked(m.into());
        assert_eq!(
            kind(&end_of(
                &panicked("failed to spawn thread: Cannot allocate memory"),
                4
            )),
            "out_of_memory"
        );
        assert_eq!(
            kind(&end_of(&panicked("index out of bounds"), 4)),
            "internal_error"
        );
    }

    #[test]
    fn the_signal_stops_with_its_resume_step_and_a_lost_orchestrator_without_one() {
        assert_eq!(
            end_of(&TrainError::SavedOnSignal { epoch: 2, step: 17 }, 8),
            TrialEnd::Stopped {
                message: "saved a resume point at step 17 (epoch 2) on the pre-timeout signal"
                    .into(),
                resume_step: Some(17),
            }
        );
        match end_of(&TrainError::OrchestratorGone, 8) {
            TrialEnd::Stopped { resume_step, .. } => assert_eq!(resume_step, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inputs_that_cannot_train_are_invalid_and_the_rest_internal() {
        let invalid = [
            TrainError::Protocol(ReadError {
                path: PathBuf::from("/t/config.json"),
                message: "missing field `trial`".into(),
            }),
            TrainError::Tokenizer(TokenizerError::Load {
                file: "tokenizer.json".into(),
                message: "bad".into(),
            }),
            TrainError::Setting("the benchmark's method is sft or lora, got `x`".into()),
            TrainError::UnknownPreset("huge".into()),
            TrainError::File {
                path: PathBuf::from("/m/config.json"),
                message: "out of memory is not a field".into(),
            },
            TrainError::Model(ModelError::MissingTensor {
                file: "model.safetensors".into(),
                name: "lm_head.weight".into(),
            }),
        ];
        for error in invalid {
            assert_eq!(kind(&end_of(&error, 8)), "invalid_input", "{error}");
        }
        let internal = [
            TrainError::Diverged {
                loss: f64::NAN,
                step: 3,
                lr: 1.0,
            },
            TrainError::NoEpoch,
            TrainError::Device("cannot open cuda:0: the NVIDIA driver sees no GPU".into()),
            TrainError::Candle(candle("shape mismatch in matmul")),
        ];
        for error in internal {
            let end = end_of(&error, 8);
            assert_eq!(kind(&end), "internal_error", "{error}");
            assert_eq!(end.message(), error.to_string());
        }
    }

    #[test]
    fn a_chain_reads_as_anyhow_prints_it_and_says_a_transparent_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("saving the checkpoint")]
        struct Outer(#[source] std::io::Error);
        let outer = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&outer), "saving the checkpoint: disk full");
        let transparent = TrainError::Candle(candle("CUBLAS_STATUS_ALLOC_FAILED"));
        assert_eq!(error_chain(&transparent), "CUBLAS_STATUS_ALLOC_FAILED");
    }
}
