//! A loaded trial's steps, each a unit: an optimizer step, an evaluation, keeping the best
//! checkpoint, a resume point, an epoch of them, and the result at the end. What they tell the
//! world goes to the trial's sink (`sink::TrialSink`); what they keep (checkpoint/, the dev
//! predictions, resume/) is the trial's own output in its folder.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::protocol::evaluation::{dev_predictions, CheckpointLabels};
use crate::protocol::trial::{peak_rss_mb, EpochMetrics, ProgressEvent, TrialEnd, TrialResult};
use crate::spec::{MetricSpec, ModelSource, Score};
use crate::stats::classify::level_accuracy;
use crate::text::data::Example;
use crate::text::encode::Seq;
use crate::trainer::error::{AtPath, Result, TrainError};
use crate::trainer::head::{head_metrics, label_log_probs};
use crate::trainer::optim::learning_rate;
use crate::trainer::resume::{PartialEpoch, ResumeState};
use crate::trainer::scoring::{dev_loss, evaluate_dev, top_accuracy};
use crate::trainer::step::{StepBatch, StepStats};
use crate::trainer::train::load::Loaded;
use crate::trainer::train::schedule::epoch_order;
use crate::trainer::train::sink::TrialSink;
use crate::util::fs::write_atomic;

/// Where a trial stands between steps: what its resume points keep.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Optimizer steps taken, over every run of the trial.
    step: usize,
    train_tokens: usize,
    /// Seconds in epochs (their evaluations included), over every run.
    train_seconds: f64,
    /// Seconds evaluating in this run.
    eval_seconds: f64,
    /// Evaluations in this run.
    evaluations: usize,
    /// `step` and `train_seconds` when this run began (a resumed run continues both).
    run_start: (usize, f64),
    /// Wall time of the earlier runs of the trial.
    prior_seconds: f64,
    /// The best evaluation so far, whose weights are in checkpoint/.
    best: Option<TrialResult>,
    /// The first epoch this run trains.
    first_epoch: u32,
    /// Steps of `first_epoch` taken already (a resume point saved inside it).
    partial: Option<PartialEpoch>,
}

/// One evaluation's numbers, and the dev set's best label per example when labels are scored.
pub struct Evaluation {
    pub metrics: EpochMetrics,
    pub best_labels: Option<Vec<Vec<(usize, f64)>>>,
}

/// How an epoch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochEnd {
    Completed,
    /// The sweep stopped the trial early (its prune file).
    Pruned,
}

/// Whether `score` beats the best evaluation so far (any beats none).
pub fn improves(metric: &MetricSpec, score: &Score, best: Option<&TrialResult>) -> bool {
    match best {
        None => true,
        Some(b) => metric.rank(score, &b.score(&metric.name)) == Ordering::Less,
    }
}

/// A loaded trial between its steps.
pub struct Trial {
    dir: PathBuf,
    loaded: Loaded,
    progress: Progress,
    /// When this run of the trial started.
    started: Instant,
}

impl Trial {
    /// The trial in `dir`, as loaded: announces its start (and where it resumes) to `sink`.
    pub fn start(
        dir: &Path,
        mut loaded: Loaded,
        started: Instant,
        sink: &mut dyn TrialSink,
    ) -> Result<Self> {
        let resumed = loaded.resumed.take();
        sink.begin(resumed.is_some())?;
        let (cfg, s) = (&loaded.cfg, &loaded.schedule);
        let model = loaded.replicas.primary();
        sink.say(&format!(
            "trial {}: {} on {} ({} per device per step of a batch of {}; {} trainable of {} parameters), {} train / {} dev examples, {} steps",
            cfg.trial,
            cfg.params.method.as_str(),
            cfg.devices.join(","),
            s.per_device_batch,
            s.batch_size,
            model.trainable_parameter_count(),
            model.config.parameter_count(),
            loaded.train_seqs.len(),
            loaded.dev_seqs.len(),
            s.total_steps
        ));
        sink.event(&ProgressEvent::Start {
            epochs: cfg.params.epochs,
            steps_per_epoch: s.steps_per_epoch,
            train_examples: loaded.train_seqs.len(),
            trainable_params: model.trainable_parameter_count(),
            devices: cfg.devices.clone(),
            per_device_batch: s.per_device_batch,
        })?;
        let mut progress = Progress {
            first_epoch: 1,
            ..Progress::default()
        };
        if let Some(state) = resumed {
            sink.say(&format!(
                "trial {}: resuming after epoch {}",
                cfg.trial, state.epoch
            ));
            sink.event(&ProgressEvent::Resumed {
                epoch: state.epoch,
                step: state.step,
            })?;
            progress = Progress {
                step: state.step,
                train_tokens: state.train_tokens,
                train_seconds: state.train_seconds,
                eval_seconds: 0.0,
                evaluations: 0,
                run_start: (state.step, state.train_seconds),
                prior_seconds: state.seconds,
                best: state.best,
                first_epoch: state.epoch + 1,
                partial: state.partial,
            };
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            loaded,
            progress,
            started,
        })
    }

    /// The epochs this run trains, in order.
    pub fn epochs(&self) -> std::ops::RangeInclusive<u32> {
        self.progress.first_epoch..=self.loaded.cfg.params.epochs
    }

    /// Wall time of the trial so far, over all its runs (so a tie resolves the same after a
    /// resume).
    fn seconds(&self) -> f64 {
        self.progress.prior_seconds + self.started.elapsed().as_secs_f64()
    }

    /// One optimizer step on the examples `batch` (indices into the training set): the step's
    /// statistics and learning rate. A loss that is no longer finite ends the trial.
    pub fn optimizer_step(&mut self, batch: &[usize]) -> Result<(StepStats, f64)> {
        let Loaded {
            cfg,
            train_seqs,
            classes,
            schedule: s,
            replicas,
            tokenizer,
            ..
        } = &mut self.loaded;
        let seqs: Vec<&Seq> = batch.iter().map(|i| &train_seqs[*i]).collect();
        let p = &cfg.params;
        let lr = learning_rate(
            p.learning_rate,
            self.progress.step,
            s.warmup_steps,
            s.total_steps,
        );
        let labelled: Vec<(&Seq, u32)>;
        let step_batch = match classes {
            Some(c) => {
                labelled = batch
                    .iter()
                    .map(|i| (&train_seqs[*i], c.train[*i]))
                    .collect();
                StepBatch::Classes(&labelled)
            }
            None => StepBatch::Tokens(&seqs),
        };
        let stats = replicas.step_batch(
            step_batch,
            s.micro_batch,
            tokenizer.pad,
            lr,
            p.max_grad_norm,
        )?;
        if !stats.loss.is_finite() {
            return Err(TrainError::Diverged {
                loss: stats.loss,
                step: self.progress.step + 1,
                lr,
            });
        }
        self.progress.step += 1;
        self.progress.train_tokens += stats.input_tokens;
        Ok((stats, lr))
    }

    /// Evaluates the primary replica (the others are identical to it) on the dev set, in
    /// micro-batches: forward-only, they need less memory than a training step, which is what the
    /// plan-time estimate predicts. `epoch_loss` is the epoch's steps so far, `train_seconds`
    /// the training time up to now.
    pub fn evaluate(
        &mut self,
        epoch: u32,
        epoch_loss: &PartialEpoch,
        train_seconds: f64,
    ) -> Result<Evaluation> {
        let l = &self.loaded;
        let model = l.replicas.primary();
        let eval_batch = l.schedule.micro_batch;
        let eval_start = Instant::now();
        let (dev_loss, accuracy, best_labels) = match &l.classes {
            // One forward per dev example and the head's argmax: no label search.
            Some(classes) => {
                let prompts: Vec<Vec<u32>> = l.dev_seqs.iter().map(|s| s.ids.clone()).collect();
                let log_probs = label_log_probs(model, &prompts, l.tokenizer.pad, eval_batch)?;
                let m = head_metrics(&log_probs, &classes.dev_gold);
                (m.dev_loss, Some(m.accuracy), Some(m.best))
            }
            None => self.generative_evaluation(eval_batch)?,
        };
        let accuracy_by_level = match (&best_labels, &l.cfg.label_separator) {
            (Some(best), Some(separator)) => accuracy_by_level(best, &l.labels, &l.dev, separator),
            _ => Vec::new(),
        };
        let metrics = EpochMetrics {
            epoch,
            step: self.progress.step,
            train_loss: epoch_loss.loss_sum / epoch_loss.steps.max(1) as f64,
            dev_loss,
            accuracy,
            tokens_per_sec: self.progress.train_tokens as f64 / train_seconds.max(1e-9),
            peak_rss_mb: peak_rss_mb(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            eval_seconds: eval_start.elapsed().as_secs_f64(),
            accuracy_by_level,
            reported: Default::default(),
        };
        self.progress.eval_seconds += metrics.eval_seconds;
        self.progress.evaluations += 1;
        Ok(Evaluation {
            metrics,
            best_labels,
        })
    }

    /// The generative methods' dev loss, accuracy and each dev example's best label, by label
    /// search (which completes each gold label too, and so gives the dev loss); without labels
    /// on both sides, the dev loss alone.
    #[allow(clippy::type_complexity)]
    fn generative_evaluation(
        &self,
        eval_batch: usize,
    ) -> Result<(f64, Option<f64>, Option<Vec<Vec<(usize, f64)>>>)> {
        let l = &self.loaded;
        let model = l.replicas.primary();
        Ok(match &l.scoring {
            Some(scoring) => {
                // Accuracy and the dev predictions need only the best label, not every score
                // (`sweep predict` on the dev file gives the others).
                let e = evaluate_dev(
                    model,
                    &l.dev_seqs,
                    &scoring.prompts,
                    &scoring.candidates,
                    &scoring.gold,
                    (
                        l.tokenizer.bos.is_some(),
                        l.cfg.params.max_seq_len as usize,
                        l.tokenizer.pad,
                        eval_batch,
                    ),
                    1,
                )?;
                let accuracy = top_accuracy(&e.best, &scoring.gold);
                (e.dev_loss, Some(accuracy), Some(e.best))
            }
            None => (
                dev_loss(model, &l.dev_seqs, l.tokenizer.pad, eval_batch)?,
                None,
                None,
            ),
        })
    }

    /// Keeps `evaluation` as the trial's best when it beats the best so far: the checkpoint,
    /// with what `sweep eval` and `sweep predict` need besides the weights, and the dev
    /// predictions behind its accuracy (for per-class metrics and confusions).
    pub fn keep_if_best(&mut self, evaluation: &Evaluation) -> Result<bool> {
        let m = &evaluation.metrics;
        let seconds = self.seconds();
        let metric = &self.loaded.cfg.metric;
        let score = Score {
            value: m.metric(&metric.name),
            dev_loss: m.dev_loss,
            seconds,
        };
        if !improves(metric, &score, self.progress.best.as_ref()) {
            return Ok(false);
        }
        let checkpoint = self.save_checkpoint()?;
        let l = &self.loaded;
        if let Some(best_labels) = &evaluation.best_labels {
            save_predictions(&self.dir, &l.dev, best_labels, &l.labels)?;
        }
        let s = &l.schedule;
        self.progress.best = Some(TrialResult {
            best_epoch: m.epoch,
            accuracy: m.accuracy,
            dev_loss: m.dev_loss,
            train_loss: m.train_loss,
            // When this evaluation was reached; the whole trial's time once it finishes.
            seconds,
            tokens_per_sec: 0.0,
            peak_rss_mb: 0.0,
            eval_seconds: 0.0,
            accuracy_by_level: m.accuracy_by_level.clone(),
            train_seconds_per_epoch: None,
            seconds_per_evaluation: None,
            trainable_params: l.replicas.primary().trainable_parameter_count(),
            micro_batch: s.micro_batch as u32,
            grad_accum: s.grad_accum as u32,
            devices: s.devices as u32,
            per_device_batch: Some(s.per_device_batch as u32),
            best_step: Some(m.step),
            steps: None,
            checkpoint,
            reported: Default::default(),
        });
        Ok(true)
    }

    /// Saves the primary replica as the trial's checkpoint, with its labels.json and the base
    /// folder's tokenizer files and chat template (which rendered every prompt and answer).
    fn save_checkpoint(&self) -> Result<PathBuf> {
        let l = &self.loaded;
        let checkpoint = self.dir.join("checkpoint");
        let mut extra = vec![(
            CheckpointLabels::FILE,
            labels_file(
                &checkpoint,
                CheckpointLabels {
                    labels: l.labels.clone(),
                    max_seq_len: l.cfg.params.max_seq_len,
                    eval_batch: l.schedule.micro_batch,
                    label_separator: l.cfg.label_separator.clone(),
                    drop_system_prompt: l.drop_system_prompt,
                },
            )?,
        )];
        if let ModelSource::Path(src) = &l.cfg.model {
            extra.extend(crate::trainer::checkpoint::tokenizer_files(src));
        }
        crate::trainer::checkpoint::save_with(
            l.replicas.primary(),
            &l.tokenizer,
            &l.base,
            &checkpoint,
            &extra,
            &l.labels,
        )?;
        Ok(checkpoint)
    }

    /// Saves a resume point after `epoch` (the last finished one), with `partial` steps of the
    /// next taken already when it is saved inside an epoch.
    pub fn save_resume_point(
        &self,
        epoch: u32,
        train_seconds: f64,
        partial: Option<PartialEpoch>,
    ) -> Result<()> {
        let state = ResumeState {
            epoch,
            step: self.progress.step,
            train_tokens: self.progress.train_tokens,
            train_seconds,
            seconds: self.seconds(),
            best: self.progress.best.clone(),
            params: self.loaded.cfg.params.clone(),
            partial,
        };
        crate::trainer::resume::save(
            &self.dir,
            &state,
            self.loaded.replicas.primary(),
            self.loaded.replicas.optimizer(),
        )
    }

    /// Trains `epoch`: its steps (after those a resume point inside it took already), an
    /// evaluation at every evaluation step, the sink asked after every step whether to stop
    /// (the pre-timeout signal: a resume point here, and `TrainError::SavedOnSignal`) or to
    /// stop early (pruned); a resume point at its end.
    pub fn run_epoch(&mut self, epoch: u32, sink: &mut dyn TrialSink) -> Result<EpochEnd> {
        let order = epoch_order(
            self.loaded.cfg.params.seed(),
            epoch,
            self.loaded.train_seqs.len(),
        );
        let mut done = self.progress.partial.take().unwrap_or(PartialEpoch {
            steps: 0,
            loss_sum: 0.0,
        });
        let epoch_start = Instant::now();
        let batch_size = self.loaded.schedule.batch_size;
        for batch in order.chunks(batch_size).skip(done.steps) {
            let (stats, lr) = self.optimizer_step(batch)?;
            done.steps += 1;
            done.loss_sum += stats.loss;
            let step = self.progress.step;
            sink.event(&ProgressEvent::Step {
                epoch,
                step,
                loss: stats.loss,
                lr,
                grad_norm: stats.grad_norm,
            })?;
            let train_seconds = self.progress.train_seconds + epoch_start.elapsed().as_secs_f64();
            if sink.stop_requested() {
                self.save_resume_point(epoch - 1, train_seconds, Some(done))?;
                return Err(TrainError::SavedOnSignal { epoch, step });
            }
            if self.loaded.schedule.evaluate_after.contains(&step) {
                let evaluation = self.evaluate(epoch, &done, train_seconds)?;
                sink.say(&self.evaluation_line(&evaluation.metrics));
                sink.event(&ProgressEvent::Epoch(evaluation.metrics.clone()))?;
                self.keep_if_best(&evaluation)?;
            }
            if sink.prune_requested() {
                self.progress.train_seconds += epoch_start.elapsed().as_secs_f64();
                return Ok(EpochEnd::Pruned);
            }
        }
        self.progress.train_seconds += epoch_start.elapsed().as_secs_f64();
        self.save_resume_point(epoch, self.progress.train_seconds, None)?;
        Ok(EpochEnd::Completed)
    }

    /// An evaluation in the trial's log.
    fn evaluation_line(&self, m: &EpochMetrics) -> String {
        format!(
            "trial {} epoch {} step {}: train_loss {:.4} dev_loss {:.4} accuracy {} ({:.0} tokens/s)",
            self.loaded.cfg.trial,
            m.epoch,
            m.step,
            m.train_loss,
            m.dev_loss,
            m.accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "-".into()),
            m.tokens_per_sec
        )
    }

    /// The trial's end once its epochs are done or it was pruned: its best evaluation, with what
    /// the whole trial ran with and took (also when that evaluation was recorded before an
    /// interruption).
    pub fn finish(self, pruned: bool, sink: &mut dyn TrialSink) -> Result<TrialEnd> {
        let Progress {
            best,
            step,
            train_tokens,
            train_seconds,
            eval_seconds,
            evaluations,
            run_start,
            ..
        } = self.progress.clone();
        let s = &self.loaded.schedule;
        let mut result = best.ok_or(TrainError::NoEpoch)?;
        result.micro_batch = s.micro_batch as u32;
        result.grad_accum = s.grad_accum as u32;
        result.devices = s.devices as u32;
        result.per_device_batch = Some(s.per_device_batch as u32);
        result.seconds = self.seconds();
        result.tokens_per_sec = train_tokens as f64 / train_seconds.max(1e-9);
        result.peak_rss_mb = peak_rss_mb();
        result.eval_seconds = eval_seconds;
        let run_steps = step.saturating_sub(run_start.0);
        if run_steps > 0 {
            let training = (train_seconds - run_start.1 - eval_seconds).max(0.0);
            let epochs = run_steps as f64 / s.steps_per_epoch.max(1) as f64;
            result.train_seconds_per_epoch = Some(training / epochs);
        }
        if evaluations > 0 {
            result.seconds_per_evaluation = Some(eval_seconds / evaluations as f64);
        }
        result.steps = Some(step);
        if !pruned {
            return Ok(TrialEnd::Finished { result });
        }
        sink.say(&format!(
            "trial {}: stopped by early termination after step {step} of {}; its best evaluation (step {}) is its result",
            self.loaded.cfg.trial,
            s.total_steps,
            result.best_step.unwrap_or(0)
        ));
        Ok(TrialEnd::Pruned { result })
    }
}

/// Accuracy at each level of the dev set's labels (`stats::classify::level_accuracy`), from
/// the best label of each example; empty when a dev example has no label.
fn accuracy_by_level(
    best: &[Vec<(usize, f64)>],
    labels: &[String],
    dev: &[Example],
    separator: &str,
) -> Vec<f64> {
    let predicted: Vec<&str> = best
        .iter()
        .map(|b| {
            b.first()
                .and_then(|(i, _)| labels.get(*i))
                .map_or("", String::as_str)
        })
        .collect();
    let gold: Option<Vec<&str>> = dev.iter().map(|e| e.tgt.as_deref()).collect();
    gold.map_or_else(Vec::new, |gold| {
        level_accuracy(&gold, &predicted, separator)
            .into_iter()
            .map(|l| l.accuracy)
            .collect()
    })
}

/// The contents of a checkpoint's `labels.json` (`protocol::evaluation::CheckpointLabels`).
fn labels_file(checkpoint: &Path, value: CheckpointLabels) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(&value).at(&checkpoint.join(CheckpointLabels::FILE))
}

/// The best evaluation's dev predictions (`protocol::evaluation::dev_predictions`).
fn save_predictions(
    dir: &Path,
    dev: &[Example],
    best: &[Vec<(usize, f64)>],
    labels: &[String],
) -> Result<()> {
    let path = dev_predictions(dir);
    let mut out = Vec::new();
    for p in crate::trainer::checkpoint_eval::predictions_from_top(dev, best, labels) {
        out.extend(serde_json::to_vec(&p).at(&path)?);
        out.push(b'\n');
    }
    write_atomic(&path, &out).at(&path)
}
