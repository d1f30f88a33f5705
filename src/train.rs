//! One trial, start to finish: load data and model, train with AdamW, evaluate after every epoch,
//! keep the best epoch's checkpoint. This is what `sweep train TRIAL_DIR` runs in its own process.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::batch::{answer_ids, make_batch, prompt_ids, supervised, token_nll, unsupervised, Seq};
use crate::data::{label_set, load_examples, Example};
use crate::eval::{accuracy, candidate_scores, dev_loss, Candidates};
use crate::model::{load_hf_folder, CausalLm, LoraSettings, Trainable};
use crate::optim::{clip_by_global_norm, learning_rate, AdamW};
use crate::parallel::Replicas;
use crate::params::{Method, TrialParams};
use crate::rng::SplitMix64;
use crate::tokenizer::TextTokenizer;
use crate::trial::{
    peak_rss_mb, write_atomic, EpochMetrics, ModelSource, ProgressEvent, TrialConfig, TrialResult,
};

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Mean loss per counted token over the whole batch.
    pub loss: f64,
    pub grad_norm: f64,
    pub input_tokens: usize,
}

/// One optimizer step over `seqs`, in micro-batches of `micro` sequences whose gradients are
/// summed. The loss of every micro-batch is divided by the token count of the whole batch, so the
/// step is the same however the batch is split.
pub fn train_step(
    model: &CausalLm,
    opt: &mut AdamW,
    seqs: &[&Seq],
    micro: usize,
    pad: u32,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepStats> {
    let denominator = counted_tokens(seqs).max(1) as f64;
    let ShardGradients {
        mut grads,
        loss,
        input_tokens,
    } = shard_gradients(model, seqs, micro, pad, denominator)?;
    let grad_norm = clip_by_global_norm(&mut grads, max_grad_norm)?;
    opt.step(&grads, lr)?;
    Ok(StepStats {
        loss,
        grad_norm,
        input_tokens,
    })
}

/// The target tokens the loss counts in `seqs`: the denominator of the batch's mean token loss.
pub fn counted_tokens(seqs: &[&Seq]) -> usize {
    seqs.iter()
        .map(|s| s.ids.len().saturating_sub(s.loss_from.max(1)))
        .sum()
}

/// The gradients of part of a batch, before clipping.
pub struct ShardGradients {
    /// One per trainable tensor of the model, in `CausalLm::trainable` order (zeros where the
    /// part gave none).
    pub grads: Vec<Tensor>,
    /// This part's summed token loss divided by the whole batch's `denominator`: its share of
    /// the batch's mean token loss.
    pub loss: f64,
    pub input_tokens: usize,
}

/// The gradients of `seqs` (all or part of a batch) in micro-batches of `micro` sequences, each
/// micro-batch's summed token loss divided by `denominator`, the whole batch's counted tokens.
/// Why a shared denominator: then the gradients of any split of the batch (micro-batches,
/// devices, uneven shares) add up to the gradient of the batch's mean token loss.
pub fn shard_gradients(
    model: &CausalLm,
    seqs: &[&Seq],
    micro: usize,
    pad: u32,
    denominator: f64,
) -> candle_core::Result<ShardGradients> {
    let vars = model.trainable();
    let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut loss_total = 0.0;
    let mut input_tokens = 0;
    for chunk in seqs.chunks(micro.max(1)) {
        let batch = make_batch(chunk, pad, model.device())?;
        input_tokens += batch.input_tokens;
        if batch.tokens == 0 {
            continue;
        }
        let loss = (token_nll(model, &batch)?.sum_all()? / denominator)?;
        loss_total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = loss.backward()?;
        for (slot, (_, var)) in acc.iter_mut().zip(vars) {
            if let Some(g) = grads.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + g)?,
                    None => g.clone(),
                });
            }
        }
    }
    let grads = acc
        .into_iter()
        .zip(vars)
        .map(|(g, (_, v))| match g {
            Some(g) => Ok(g),
            None => v.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(ShardGradients {
        grads,
        loss: loss_total,
        input_tokens,
    })
}

/// The candle device for a slot name of `TrialConfig::devices` (`cpu` or `cuda:N`).
pub fn device_for(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(id) = name.strip_prefix("cuda:") {
        let id: usize = id.parse().with_context(|| format!("bad device `{name}`"))?;
        return Device::new_cuda(id).map_err(|e| {
            let message =
                crate::gpu::open_failure_message(name, crate::gpu::CUDA_BUILT, &e.to_string());
            anyhow::Error::new(e).context(message)
        });
    }
    bail!("unknown device `{name}` (expected cpu or cuda:N)")
}

/// A model ready to train, with its tokenizer and a description of its base for checkpoints.
pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub base: String,
}

/// The tokenizer a trial uses: for a preset, a word-level vocabulary built from the training
/// text (every turn of it); for a model folder, its `tokenizer.json` with the special ids of its
/// config.json. Shared with the checker, which measures lengths with the very same tokenizer.
pub fn load_tokenizer(source: &ModelSource, train: &[Example]) -> Result<TextTokenizer> {
    match source {
        ModelSource::Preset(_) => {
            let texts = train.iter().flat_map(|e| {
                e.history
                    .iter()
                    .flat_map(|(q, a)| [q.as_str(), a.as_str()])
                    .chain(
                        [e.system.as_deref(), Some(e.src.as_str()), e.tgt.as_deref()]
                            .into_iter()
                            .flatten(),
                    )
            });
            Ok(TextTokenizer::build_word_level(texts, 1)?)
        }
        ModelSource::Path(dir) => {
            // Only the special ids are needed here, so config.json is read without the weights.
            let config_path = dir.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: cannot read", config_path.display()))?;
            let config: crate::model::ModelConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a model config", config_path.display()))?;
            let tok_path = dir.join("tokenizer.json");
            if !tok_path.exists() {
                bail!("{}: no tokenizer.json in the model folder", dir.display());
            }
            let tokenizer = TextTokenizer::from_file(
                &tok_path,
                config.bos_token_id,
                config.eos_token_id,
                config.pad_token_id,
            )?;
            if tokenizer.vocab_size() > config.vocab_size {
                bail!(
                    "{}: the tokenizer has {} tokens but config.json's vocab_size is {}",
                    tok_path.display(),
                    tokenizer.vocab_size(),
                    config.vocab_size
                );
            }
            Ok(tokenizer)
        }
    }
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
            let mut config = crate::presets::preset(name)
                .with_context(|| format!("unknown model preset `{name}`"))?;
            config.vocab_size = tokenizer.vocab_size();
            config.bos_token_id = tokenizer.bos;
            config.eos_token_id = Some(tokenizer.eos);
            config.pad_token_id = Some(tokenizer.pad);
            let weights = CausalLm::random_weights(&config, seed, DType::F32, device)?;
            let model = CausalLm::new(config, &weights, trainable, seed, device, name)?;
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
            )?;
            Ok(LoadedModel {
                model,
                tokenizer,
                base: dir.display().to_string(),
            })
        }
    }
}

/// Token sequences for training or dev loss: answer-only loss for sft/lora, all-token loss on
/// the text (`src`) for post_pretrain.
pub fn encode_all(
    examples: &[Example],
    tok: &TextTokenizer,
    method: Method,
    max_len: usize,
    file: &Path,
) -> Result<Vec<Seq>> {
    examples
        .iter()
        .map(|ex| {
            let seq = match (method, &ex.tgt) {
                (Method::PostPretrain, _) => unsupervised(tok, &ex.src, max_len, ex.line),
                (_, Some(tgt)) => supervised(
                    &prompt_ids(tok, ex)?,
                    &answer_ids(tok, tgt)?,
                    tok.bos.is_some(),
                    max_len,
                    ex.line,
                ),
                (_, None) => bail!(
                    "{}:{}: tgt: missing; method {} needs labelled examples",
                    file.display(),
                    ex.line,
                    method.as_str()
                ),
            };
            seq.with_context(|| file.display().to_string())
        })
        .collect()
}

/// Runs the trial in `dir`: writes metrics.jsonl, checkpoint/ (best epoch) and result.json, and
/// hands every progress event to `emit` (the CLI prints them for the orchestrator).
pub fn run_trial(dir: &Path, mut emit: impl FnMut(&ProgressEvent)) -> Result<TrialResult> {
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
    if p.tf32 && crate::gpu::set_tf32(true) {
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
            .collect::<Result<Vec<_>, _>>()?;
        let prompts = dev
            .iter()
            .map(|e| prompt_ids(&tokenizer, e))
            .collect::<Result<Vec<_>, _>>()?;
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
    let total_steps = steps_per_epoch * p.epochs as usize;
    let warmup_steps = (p.warmup * total_steps as f64).round() as usize;
    // `batch_size` is the global batch: each step's examples are split over the devices, the
    // first `batch_size % k` devices taking one more, and `micro_batch` is per forward pass on
    // one device (at most the device's share).
    let replica_count = devices.len();
    let per_device_batch = crate::parallel::per_device_batch(batch_size, replica_count);
    let micro_batch = (p.micro_batch() as usize).min(per_device_batch).max(1);
    let grad_accum = per_device_batch.div_ceil(micro_batch);
    let mut replicas = Replicas::new(model, &devices[1..], p.weight_decay, p.seed())
        .context("building one model replica per device")?;

    // An interrupted trial continues from its last finished epoch.
    let resumed = replicas.restore(|model, opt| crate::resume::load(dir, p, model, opt))?;
    let model = replicas.primary();
    let metrics_path = dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed.is_some())
        .truncate(resumed.is_none())
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let mut record = |event: &ProgressEvent, emit: &mut dyn FnMut(&ProgressEvent)| -> Result<()> {
        writeln!(metrics, "{}", serde_json::to_string(event)?)?;
        metrics.flush()?;
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
    let mut first_epoch = 1;
    let mut prior_seconds = 0.0;
    if let Some(state) = resumed {
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
    for epoch in first_epoch..=p.epochs {
        // Each epoch's order depends on the seed and the epoch alone, so a resumed trial sees
        // the same batches as an uninterrupted one.
        let mut rng = SplitMix64::new(
            p.seed() ^ 0x5eed_da7a ^ u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order: Vec<usize> = (0..train_seqs.len()).collect();
        rng.shuffle(&mut order);
        let mut epoch_loss = 0.0;
        let mut epoch_steps = 0usize;
        let epoch_start = Instant::now();
        for chunk in order.chunks(batch_size) {
            let seqs: Vec<&Seq> = chunk.iter().map(|i| &train_seqs[*i]).collect();
            let lr = learning_rate(p.learning_rate, step, warmup_steps, total_steps);
            let stats = replicas.step(&seqs, micro_batch, tokenizer.pad, lr, p.max_grad_norm)?;
            if !stats.loss.is_finite() {
                bail!(
                    "loss became {} at step {} (learning rate {lr:.3e} too high?)",
                    stats.loss,
                    step + 1
                );
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
        }
        train_seconds += epoch_start.elapsed().as_secs_f64();
        // Evaluation and checkpoints use the primary replica; the others are identical to it.
        let model = replicas.primary();
        // Evaluation batches are micro-batches: forward-only, they need less memory than a
        // training step, which is what the plan-time estimate predicts. With k devices that is
        // the per-device micro-batch, as the first device also trains with.
        let eval_batch = micro_batch;
        let dev_loss = dev_loss(model, &dev_seqs, tokenizer.pad, eval_batch)?;
        let accuracy = match &scoring {
            Some((cands, prompts, gold)) => {
                let scores = candidate_scores(
                    model,
                    prompts,
                    cands,
                    tokenizer.bos.is_some(),
                    max_len,
                    tokenizer.pad,
                    eval_batch,
                )?;
                Some(accuracy(&scores, gold))
            }
            None => None,
        };
        let m = EpochMetrics {
            epoch,
            step,
            train_loss: epoch_loss / epoch_steps.max(1) as f64,
            dev_loss,
            accuracy,
            tokens_per_sec: train_tokens as f64 / train_seconds.max(1e-9),
            peak_rss_mb: peak_rss_mb(),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "trial {} epoch {epoch}: train_loss {:.4} dev_loss {:.4} accuracy {} ({:.0} tokens/s)",
            cfg.trial,
            m.train_loss,
            m.dev_loss,
            m.accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "-".into()),
            m.tokens_per_sec
        );
        record(&ProgressEvent::Epoch(m.clone()), &mut emit)?;
        let value = match cfg.metric.name {
            crate::spec::Metric::Accuracy => m.accuracy.unwrap_or(f64::NAN),
            crate::spec::Metric::DevLoss => m.dev_loss,
        };
        let improves = match &best {
            None => true,
            Some(b) => {
                let prev = b.metric(cfg.metric.name).unwrap_or(f64::NAN);
                cfg.metric.better(value, prev) || (value == prev && m.dev_loss < b.dev_loss)
            }
        };
        if improves {
            crate::checkpoint::save(model, &tokenizer, &base, &checkpoint_dir)?;
            best = Some(TrialResult {
                best_epoch: epoch,
                accuracy: m.accuracy,
                dev_loss: m.dev_loss,
                train_loss: m.train_loss,
                seconds: 0.0,
                tokens_per_sec: 0.0,
                peak_rss_mb: 0.0,
                trainable_params: model.trainable_parameter_count(),
                micro_batch: micro_batch as u32,
                grad_accum: grad_accum as u32,
                devices: replica_count as u32,
                per_device_batch: Some(per_device_batch as u32),
                checkpoint: checkpoint_dir.clone(),
            });
        }
        crate::resume::save(
            dir,
            &crate::resume::ResumeState {
                epoch,
                step,
                train_tokens,
                train_seconds,
                seconds: prior_seconds + started.elapsed().as_secs_f64(),
                best: best.clone(),
                params: p.clone(),
            },
            model,
            replicas.optimizer(),
        )?;
    }
    let mut result = best.context("no epoch ran")?;
    // What the trial ran with, also when its best epoch was recorded before an interruption.
    result.micro_batch = micro_batch as u32;
    result.grad_accum = grad_accum as u32;
    result.devices = replica_count as u32;
    result.per_device_batch = Some(per_device_batch as u32);
    result.seconds = prior_seconds + started.elapsed().as_secs_f64();
    result.tokens_per_sec = train_tokens as f64 / train_seconds.max(1e-9);
    result.peak_rss_mb = peak_rss_mb();
    write_atomic(
        &dir.join(TrialResult::FILE),
        &serde_json::to_vec_pretty(&result)?,
    )?;
    crate::resume::clear(dir)?;
    Ok(result)
}
