//! Part 1: our model's logits and gradients on the device against the CPU's, on the tiny
//! transformers fixture (`tests/fixtures/hf/tiny-llama`), and the CPU's logits against the ones
//! transformers computed. The trainer computes (`trainer::probe::parity`); this module judges.

use std::path::Path;

use anyhow::{Context, Result};

use crate::diagnostics::table::{judged, row, Row, Status};
use crate::trainer::probe::Parity;

const PART: &str = "1 parity";

/// Relative tolerance of f32 on the device against f32 on the CPU (only summation order
/// differs).
pub const F32_TOLERANCE: f64 = 1e-4;
/// bf16 keeps 8 significant bits (unit round-off 2^-8 = 3.9e-3); every weight and activation of
/// the 2-layer fixture (random weights of std 0.2, so large logits) is rounded once or more. The
/// CPU's bf16 path measured 2.9e-2 (logits) and 4.4e-2 (gradients) on it: the tolerances are
/// about twice that, so a GPU that rounds as carefully passes and one that loses precision
/// somewhere (bf16 accumulation, an f32 adapter cast to bf16) does not.
pub const BF16_LOGITS_TOLERANCE: f64 = 6e-2;
pub const BF16_GRADIENT_TOLERANCE: f64 = 1e-1;

/// The fixture's token ids and transformers' logits for them (flattened).
fn expected(dir: &Path) -> Result<(Vec<Vec<u32>>, Vec<f32>)> {
    let path = dir.join("expected_logits.json");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let ids: Vec<Vec<u32>> = serde_json::from_value(expected["ids"].clone())
        .with_context(|| format!("{}: ids", path.display()))?;
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone())
        .with_context(|| format!("{}: logits", path.display()))?;
    Ok((ids, want.into_iter().flatten().flatten().collect()))
}

/// Part 1 on `device`, in f32 (full fine-tuning and LoRA) and with bf16 weights and f32 adapters.
pub fn run(root: &Path, device: &str) -> Result<Vec<Row>> {
    let dir = root.join("tests/fixtures/hf/tiny-llama");
    let (ids, want) = expected(&dir)?;
    let computed = crate::trainer::probe::parity(&dir, &ids, device)?;
    Ok(rows(&want, &computed))
}

/// Largest absolute difference relative to the largest magnitude of `reference`.
pub fn relative_difference(got: &[f32], reference: &[f32]) -> f64 {
    if got.len() != reference.len() {
        return f64::INFINITY;
    }
    let mut worst = 0.0f64;
    let mut largest = 0.0f64;
    for (g, r) in got.iter().zip(reference) {
        worst = worst.max((f64::from(*g) - f64::from(*r)).abs());
        largest = largest.max(f64::from(*r).abs());
    }
    if worst == 0.0 {
        0.0
    } else {
        worst / largest.max(f64::MIN_POSITIVE)
    }
}

/// A row comparing `got` with `reference` within `tolerance`, with the number of values compared
/// when `count` says so.
fn compared(check: &str, got: &[f32], reference: &[f32], tolerance: f64, count: bool) -> Row {
    let d = relative_difference(got, reference);
    let over = if count {
        format!(" over {} values", reference.len())
    } else {
        String::new()
    };
    row(
        PART,
        check,
        format!("{d:.1e}{over} (tolerance {tolerance:.0e})"),
        judged(d, tolerance),
    )
}

/// The part's rows from transformers' logits `want` and what the trainer computed.
pub fn rows(want: &[f32], p: &Parity) -> Vec<Row> {
    let f32_ = F32_TOLERANCE;
    vec![
        compared(
            "f32 logits, CPU vs transformers",
            &p.cpu.logits,
            want,
            f32_,
            false,
        ),
        compared(
            "f32 logits, device vs CPU",
            &p.device.logits,
            &p.cpu.logits,
            f32_,
            false,
        ),
        compared(
            "f32 sft gradients, device vs CPU",
            &p.device.gradients,
            &p.cpu.gradients,
            f32_,
            true,
        ),
        compared(
            "f32 lora gradients, device vs CPU",
            &p.device_lora.gradients,
            &p.cpu_lora.gradients,
            f32_,
            true,
        ),
        row(
            PART,
            "bf16 weights keep f32 adapters",
            format!(
                "compute {}, adapters {}",
                if p.bf16_computes_in_bf16 {
                    "BF16"
                } else {
                    "not BF16"
                },
                if p.bf16_adapters_are_f32 {
                    "f32"
                } else {
                    "not f32"
                }
            ),
            Status::of(p.bf16_computes_in_bf16 && p.bf16_adapters_are_f32),
        ),
        compared(
            "bf16 lora logits, device vs f32 CPU",
            &p.device_bf16_lora.logits,
            &p.cpu_lora.logits,
            BF16_LOGITS_TOLERANCE,
            false,
        ),
        compared(
            "bf16 lora gradients (f32), device vs f32 CPU",
            &p.device_bf16_lora.gradients,
            &p.cpu_lora.gradients,
            BF16_GRADIENT_TOLERANCE,
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::probe::Outputs;

    #[test]
    fn relative_difference_is_against_the_largest_reference_value() {
        assert_eq!(relative_difference(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        let d = relative_difference(&[1.0, 4.1], &[1.0, 4.0]);
        assert!((d - 0.025).abs() < 1e-6, "{d}");
        assert!(relative_difference(&[1.0], &[1.0, 2.0]).is_infinite());
    }

    #[test]
    fn equal_outputs_pass_and_a_drifting_device_fails() {
        let same = Outputs {
            logits: vec![1.0, -2.0],
            gradients: vec![0.5, 0.25, -1.0],
        };
        let mut p = Parity {
            cpu: same.clone(),
            device: same.clone(),
            cpu_lora: same.clone(),
            device_lora: same.clone(),
            device_bf16_lora: same.clone(),
            bf16_computes_in_bf16: true,
            bf16_adapters_are_f32: true,
        };
        let rows_now = rows(&same.logits, &p);
        assert_eq!(rows_now.len(), 7);
        assert!(
            rows_now.iter().all(|r| r.status == Status::Pass),
            "{rows_now:?}"
        );
        p.device.gradients[0] = 0.6;
        p.bf16_adapters_are_f32 = false;
        let failed: Vec<String> = rows(&same.logits, &p)
            .into_iter()
            .filter(|r| r.status == Status::Fail)
            .map(|r| r.check)
            .collect();
        assert_eq!(
            failed,
            [
                "f32 sft gradients, device vs CPU",
                "bf16 weights keep f32 adapters"
            ]
        );
    }
}
