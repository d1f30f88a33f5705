//! One trial, start to finish: load data and model, train with AdamW, evaluate after every epoch,
//! keep the best epoch's checkpoint. This is what `sweep train TRIAL_DIR` runs in its own process.

use std::cmp::Ordering;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};

use crate::protocol::evaluation::{dev_predictions, CheckpointLabels};
use crate::protocol::trial::{
    evaluation_steps, peak_rss_mb, EpochMetrics, ProgressEvent, TrialConfig, TrialResult,
    METRICS_FILE, PRUNE_FILE,
};
use crate::spec::params::{Method, TrialParams};
use crate::spec::{ModelSource, Score};
use crate::text::data::{label_set, load_examples, Example};
use crate::text::encode::{answer_ids, encode_all, prompt_ids, Seq};
use crate::text::tokenizer::{load_tokenizer, TextTokenizer};
use crate::trainer::error::{AtPath, Result, TrainError};
use crate::trainer::eval::{candidate_top_k, dev_loss, top_accuracy, Candidates};
use crate::trainer::gpu::{open_cuda, set_tf32};
use crate::trainer::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};
use crate::trainer::optim::learning_rate;
use crate::trainer::parallel::Replicas;
use crate::util::fs::write_atomic;
use crate::util::rng::SplitMix64;

/// The candle device for a slot name of `TrialConfig::devices` (`cpu` or `cuda:N`).
pub fn device_for(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(id) = name.strip_prefix("cuda:") {
        let id: usize = id
            .parse()
            .map_err(|_| TrainError::Device(format!("bad device `{name}`")))?;
        return open_cuda(name, id);
    }
    Err(TrainError::Device(format!(
        "unknown device `{name}` (expected cpu or cuda:N)"
    )))
}

/// A model ready to train, with its tokenizer and a description of its base for checkpoints.
pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub base: String,
}

/// Builds the trial's model: a preset (random init, tokenizer from the training text) or a
/// Hugging Face folder.
pub fn load_model(
    source: &ModelSource,
    params: &TrialParams,
    train: &[Example],
    device: &Device,
) -> Result<LoadedModel> {
    let trainable = match params.method {
        Method::Lora => Trainable::Lora(LoraSettings {
            rank: params.lora_rank as usize,
            alpha: params.lora_alpha,
            targets: params.lora_targets.clone(),
        }),
        Method::Sft | Method::PostPretrain => Trainable::All,
    };
    let seed = params.seed();
    let tokenizer = load_tokenizer(source, train)?;
    match source {
        ModelSource::Preset(name) => {
            let mut config = crate::spec::shape::preset(name)
                .ok_or_else(|| TrainError::UnknownPreset(name.clone()))?;
            config.vocab_size = tokenizer.vocab_size();
            config.bos_token_id = tokenizer.bos;
            config.eos_token_id = Some(tokenizer.eos);
            config.pad_token_id = Some(tokenizer.pad);
            let weights = CausalLm::random_weights(&config, seed, DType::F32, device)?;
            let model = CausalLm::new(config, &weights, trainable, seed, device, name)?
                .with_kernels(params.kernels);
            Ok(LoadedModel {
                model,
                tokenizer,
                base: format!("sweep-preset:{name}:seed{seed}"),
            })
        }
        ModelSource::Path(dir) => {
            let (config, weights) = load_hf_folder(dir, device)?;
            let model = CausalLm::new(
                config,
                &weights,
                trainable,
                seed,
                device,
                &dir.display().to_string(),
            )?
            .with_kernels(params.kernels);
            Ok(LoadedModel {
                model,
                tokenizer,
                base: dir.display().to_string(),
            })
        }
    }
}

/// Runs the trial in `dir`: writes metrics.jsonl, checkpoint/ (best epoch) and result.json, and
/// hands every progress event to `emit` (the CLI prints them for the orchestrator).
pub fn run_trial(dir: &Path, mut emit: impl FnMut(&ProgressEvent)) -> Result<TrialResult> {
    crate::trainer::ops::cpu::tune_process();
    let started = Instant::now();
    let cfg = TrialConfig::read(dir)?;
    let p = &cfg.params;
    // One replica per slot the trial holds (`gpus: k`); on a CPU-only pool every slot is `cpu`.
    let devices = if cfg.devices.is_empty() {
        vec![Device::Cpu]
    } else {
        cfg.devices
            .iter()
            .map(|name| device_for(name))
            .collect::<Result<Vec<_>>>()?
    };
    if p.tf32 && set_tf32(true) {
        eprintln!(
            "trial {}: f32 matrix products may use TF32 (tf32: true)",
            cfg.trial
        );
    }
    let train = load_examples(&cfg.train)?;
    let dev = load_examples(&cfg.dev)?;
    let LoadedModel {
        model,
        tokenizer,
        base,
    } = load_model(&cfg.model, p, &train, &devices[0])?;
    let max_len = p.max_seq_len as usize;
    let train_seqs = encode_all(&train, &tokenizer, p.method, max_len, &cfg.train)?;
    let dev_seqs = encode_all(&dev, &tokenizer, p.method, max_len, &cfg.dev)?;

    // Classification accuracy needs labels on both sides; the candidates are train's labels.
    let labels = label_set(&train);
    let scoring = if !labels.is_empty() && dev.iter().all(|e| e.tgt.is_some()) {
        let answers = labels
            .iter()
            .map(|l| answer_ids(&tokenizer, l))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let prompts = dev
            .iter()
            .map(|e| prompt_ids(&tokenizer, e))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let gold: Vec<Option<usize>> = dev
            .iter()
            .map(|e| e.tgt.as_ref().and_then(|t| labels.binary_search(t).ok()))
            .collect();
        Some((
            Candidates {
                answers,
                labels: labels.clone(),
            },
            prompts,
            gold,
        ))
    } else {
        None
    };

    let batch_size = p.batch_size as usize;
    let steps_per_epoch = train_seqs.len().div_ceil(batch_size);
    // The schedule always follows the full planned length, so a trial's first k steps are the
    // same whether or not early termination stops it after them.
    let total_steps = steps_per_epoch * p.epochs as usize;
    let evaluate_after: std::collections::BTreeSet<usize> =
        evaluation_steps(steps_per_epoch, p.epochs, p.eval_every)
            .into_iter()
            .collect();
    let prune_file = dir.join(PRUNE_FILE);
    let warmup_steps = (p.warmup * total_steps as f64).round() as usize;
    // `batch_size` is the global batch: each step's examples are split over the devices, the
    // first `batch_size % k` devices taking one more, and `micro_batch` is per forward pass on
    // one device (at most the device's share).
    let replica_count = devices.len();
    let per_device_batch = crate::trainer::parallel::per_device_batch(batch_size, replica_count);
    let micro_batch = (p.micro_batch() as usize).min(per_device_batch).max(1);
    let grad_accum = per_device_batch.div_ceil(micro_batch);
    let mut replicas = Replicas::new(model, &devices[1..], p.weight_decay, p.seed())?;

    // An interrupted trial continues from its last finished epoch.
    let resumed =
        replicas.restore(|model, opt| crate::trainer::resume::load(dir, p, model, opt))?;
    let model = replicas.primary();
    let metrics_path = dir.join(METRICS_FILE);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed.is_some())
        .truncate(resumed.is_none())
        .open(&metrics_path)
        .at(&metrics_path)?;
    let mut record = |event: &ProgressEvent, emit: &mut dyn FnMut(&ProgressEvent)| -> Result<()> {
        let line = serde_json::to_string(event).at(&metrics_path)?;
        writeln!(metrics, "{line}").at(&metrics_path)?;
        metrics.flush().at(&metrics_path)?;
        emit(event);
        Ok(())
    };
    eprintln!(
        "trial {}: {} on {} ({} per device per step of a batch of {batch_size}; {} trainable of {} parameters), {} train / {} dev examples, {} steps",
        cfg.trial,
        p.method.as_str(),
        cfg.devices.join(","),
        per_device_batch,
        model.trainable_parameter_count(),
        model.config.parameter_count(),
        train_seqs.len(),
        dev_seqs.len(),
        total_steps
    );
    record(
        &ProgressEvent::Start {
            epochs: p.epochs,
            steps_per_epoch,
            train_examples: train_seqs.len(),
            trainable_params: model.trainable_parameter_count(),
            devices: cfg.devices.clone(),
            per_device_batch,
        },
        &mut emit,
    )?;

    let checkpoint_dir = dir.join("checkpoint");
    let mut best: Option<TrialResult> = None;
    let mut step = 0usize;
    let mut train_seconds = 0.0f64;
    let mut train_tokens = 0usize;
    let mut eval_seconds = 0.0f64;
    let mut first_epoch = 1;
    let mut prior_seconds = 0.0;
    let mut partial = None;
    if let Some(state) = resumed {
        partial = state.partial.clone();
        prior_seconds = state.seconds;
        eprintln!("trial {}: resuming after epoch {}", cfg.trial, state.epoch);
        record(
            &ProgressEvent::Resumed {
                epoch: state.epoch,
                step: state.step,
            },
            &mut emit,
        )?;
        best = state.best;
        step = state.step;
        train_seconds = state.train_seconds;
        train_tokens = state.train_tokens;
        first_epoch = state.epoch + 1;
    }
    let mut pruned = false;
    'epochs: for epoch in first_epoch..=p.epochs {
        // Each epoch's order depends on the seed and the epoch alone, so a resumed trial sees
        // the same batches as an uninterrupted one.
        let mut rng = SplitMix64::new(
            p.seed() ^ 0x5eed_da7a ^ u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order: Vec<usize> = (0..train_seqs.len()).collect();
        rng.shuffle(&mut order);
        // A resume point saved inside this epoch: its first steps are taken already.
        let done = partial
            .take()
            .unwrap_or(crate::trainer::resume::PartialEpoch {
                steps: 0,
                loss_sum: 0.0,
            });
        let mut epoch_loss = done.loss_sum;
        let mut epoch_steps = done.steps;
        let epoch_start = Instant::now();
        for chunk in order.chunks(batch_size).skip(done.steps) {
            let seqs: Vec<&Seq> = chunk.iter().map(|i| &train_seqs[*i]).collect();
            let lr = learning_rate(p.learning_rate, step, warmup_steps, total_steps);
            let stats = replicas.step(&seqs, micro_batch, tokenizer.pad, lr, p.max_grad_norm)?;
            if !stats.loss.is_finite() {
                return Err(TrainError::Diverged {
                    loss: stats.loss,
                    step: step + 1,
                    lr,
                });
            }
            step += 1;
            epoch_steps += 1;
            epoch_loss += stats.loss;
            train_tokens += stats.input_tokens;
            record(
                &ProgressEvent::Step {
                    epoch,
                    step,
                    loss: stats.loss,
                    lr,
                    grad_norm: stats.grad_norm,
                },
                &mut emit,
            )?;
            if crate::trainer::stop::requested() {
                crate::trainer::resume::save(
                    dir,
                    &crate::trainer::resume::ResumeState {
                        epoch: epoch - 1,
                        step,
                        train_tokens,
                        train_seconds: train_seconds + epoch_start.elapsed().as_secs_f64(),
                        seconds: prior_seconds + started.elapsed().as_secs_f64(),
                        best: best.clone(),
                        params: p.clone(),
                        partial: Some(crate::trainer::resume::PartialEpoch {
                            steps: epoch_steps,
                            loss_sum: epoch_loss,
                        }),
                    },
                    replicas.primary(),
                    replicas.optimizer(),
                )?;
                return Err(TrainError::SavedOnSignal { epoch, step });
            }
            if !evaluate_after.contains(&step) {
                if prune_file.exists() {
                    pruned = true;
                    train_seconds += epoch_start.elapsed().as_secs_f64();
                    break 'epochs;
                }
                continue;
            }
            let epoch_train_seconds = train_seconds + epoch_start.elapsed().as_secs_f64();
            // Evaluation and checkpoints use the primary replica; the others are identical to it.
            let model = replicas.primary();
            // Evaluation batches are micro-batches: forward-only, they need less memory than a
            // training step, which is what the plan-time estimate predicts. With k devices that is
            // the per-device micro-batch, as the first device also trains with.
            let eval_batch = micro_batch;
            let eval_start = Instant::now();
            let dev_loss = dev_loss(model, &dev_seqs, tokenizer.pad, eval_batch)?;
            let mut epoch_best = None;
            let accuracy = match &scoring {
                Some((cands, prompts, gold)) => {
                    // Accuracy and the dev predictions need only the best label, not every
                    // score (`sweep predict` on the dev file gives the others).
                    let best = candidate_top_k(
                        model,
                        prompts,
                        cands,
                        tokenizer.bos.is_some(),
                        max_len,
                        tokenizer.pad,
                        eval_batch,
                        1,
                    )?;
                    let acc = top_accuracy(&best, gold);
                    epoch_best = Some(best);
                    Some(acc)
                }
                None => None,
            };
            let m = EpochMetrics {
                epoch,
                step,
                train_loss: epoch_loss / epoch_steps.max(1) as f64,
                dev_loss,
                accuracy,
                tokens_per_sec: train_tokens as f64 / epoch_train_seconds.max(1e-9),
                peak_rss_mb: peak_rss_mb(),
                elapsed_s: started.elapsed().as_secs_f64(),
                eval_seconds: eval_start.elapsed().as_secs_f64(),
            };
            eval_seconds += m.eval_seconds;
            eprintln!(
                    "trial {} epoch {epoch} step {step}: train_loss {:.4} dev_loss {:.4} accuracy {} ({:.0} tokens/s)",
                    cfg.trial,
                    m.train_loss,
                    m.dev_loss,
                    m.accuracy
                        .map(|a| format!("{a:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    m.tokens_per_sec
                );
            record(&ProgressEvent::Epoch(m.clone()), &mut emit)?;
            // Seconds over all runs of the trial, so a tie is resolved the same after a resume.
            let seconds_so_far = prior_seconds + started.elapsed().as_secs_f64();
            let score = Score {
                value: m.metric(cfg.metric.name),
                dev_loss: m.dev_loss,
                seconds: seconds_so_far,
            };
            let improves = match &best {
                None => true,
                Some(b) => cfg.metric.rank(&score, &b.score(cfg.metric.name)) == Ordering::Less,
            };
            if improves {
                // With what `sweep eval` and `sweep predict` need besides the weights; then the dev
                // predictions behind this epoch's accuracy (for per-class metrics and confusions).
                let mut extra = vec![(
                    CheckpointLabels::FILE,
                    labels_file(&checkpoint_dir, &labels, p.max_seq_len, eval_batch)?,
                )];
                // The base folder's chat template, which rendered every prompt and answer.
                if let ModelSource::Path(src) = &cfg.model {
                    for name in ["tokenizer_config.json", "chat_template.jinja"] {
                        if let Ok(bytes) = std::fs::read(src.join(name)) {
                            extra.push((name, bytes));
                        }
                    }
                }
                crate::trainer::checkpoint::save_with(
                    model,
                    &tokenizer,
                    &base,
                    &checkpoint_dir,
                    &extra,
                )?;
                if let Some(best_labels) = &epoch_best {
                    save_predictions(dir, &dev, best_labels, &labels)?;
                }
                best = Some(TrialResult {
                    best_epoch: epoch,
                    accuracy: m.accuracy,
                    dev_loss: m.dev_loss,
                    train_loss: m.train_loss,
                    // When this epoch was reached; the whole trial's time once it finishes.
                    seconds: seconds_so_far,
                    tokens_per_sec: 0.0,
                    peak_rss_mb: 0.0,
                    eval_seconds: 0.0,
                    trainable_params: model.trainable_parameter_count(),
                    micro_batch: micro_batch as u32,
                    grad_accum: grad_accum as u32,
                    devices: replica_count as u32,
                    per_device_batch: Some(per_device_batch as u32),
                    best_step: Some(step),
                    steps: None,
                    checkpoint: checkpoint_dir.clone(),
                });
            }
            if prune_file.exists() {
                pruned = true;
                train_seconds += epoch_start.elapsed().as_secs_f64();
                break 'epochs;
            }
        }
        train_seconds += epoch_start.elapsed().as_secs_f64();
        let model = replicas.primary();
        crate::trainer::resume::save(
            dir,
            &crate::trainer::resume::ResumeState {
                epoch,
                step,
                train_tokens,
                train_seconds,
                seconds: prior_seconds + started.elapsed().as_secs_f64(),
                best: best.clone(),
                params: p.clone(),
                partial: None,
            },
            model,
            replicas.optimizer(),
        )?;
    }
    let mut result = best.ok_or(TrainError::NoEpoch)?;
    // What the trial ran with, also when its best epoch was recorded before an interruption.
    result.micro_batch = micro_batch as u32;
    result.grad_accum = grad_accum as u32;
    result.devices = replica_count as u32;
    result.per_device_batch = Some(per_device_batch as u32);
    result.seconds = prior_seconds + started.elapsed().as_secs_f64();
    result.tokens_per_sec = train_tokens as f64 / train_seconds.max(1e-9);
    result.peak_rss_mb = peak_rss_mb();
    result.eval_seconds = eval_seconds;
    result.steps = Some(step);
    if pruned {
        eprintln!(
            "trial {}: stopped by early termination after step {step} of {total_steps}; its best evaluation (step {}) is its result",
            cfg.trial,
            result.best_step.unwrap_or(0)
        );
    }
    let result_path = dir.join(TrialResult::FILE);
    write_atomic(
        &result_path,
        &serde_json::to_vec_pretty(&result).at(&result_path)?,
    )
    .at(&result_path)?;
    crate::trainer::resume::clear(dir).at(dir)?;
    Ok(result)
}

/// The contents of a checkpoint's `labels.json` (`protocol::evaluation::CheckpointLabels`).
fn labels_file(
    checkpoint: &Path,
    labels: &[String],
    max_seq_len: u32,
    eval_batch: usize,
) -> Result<Vec<u8>> {
    let value = CheckpointLabels {
        labels: labels.to_vec(),
        max_seq_len,
        eval_batch,
    };
    serde_json::to_vec_pretty(&value).at(&checkpoint.join(CheckpointLabels::FILE))
}

/// The best epoch's dev predictions (`protocol::evaluation::dev_predictions`).
fn save_predictions(
    dir: &Path,
    dev: &[Example],
    best: &[Vec<(usize, f64)>],
    labels: &[String],
) -> Result<()> {
    let path = dev_predictions(dir);
    let mut out = Vec::new();
    for p in crate::trainer::evaluate::predictions_from_top(dev, best, labels) {
        out.extend(serde_json::to_vec(&p).at(&path)?);
        out.push(b'\n');
    }
    write_atomic(&path, &out).at(&path)
}
