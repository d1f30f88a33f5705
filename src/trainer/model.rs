//! The trainable decoder-only transformer (Llama-style) and its LoRA adapters.
//!
//! Why our own model and not candle-transformers': those keep KV caches and return only the last
//! token's logits, and candle-nn's fast `rms_norm`/`softmax_last_dim`/`rope` kernels have no
//! backward pass. Everything here is built from differentiable tensor ops, and tensor names follow
//! Hugging Face's `LlamaForCausalLM`, so checkpoints load in `transformers` and HF folders load here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use crate::spec::shape::{weight_shapes, ModelConfig, ShapeError};
use crate::text::model_folder::read_checked_config;
use crate::trainer::ops::grad_sink::GradSink;
use crate::trainer::ops::{self, Kernels};
use crate::util::rng::SplitMix64;

/// Errors from building or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        file: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(transparent)]
    InvalidShape(#[from] ShapeError),
    #[error(transparent)]
    Folder(#[from] crate::text::model_folder::ModelFolderError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// LoRA settings for a model whose base weights are frozen.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
}

/// A low-rank adapter on one projection: `y = x W^T + scale * (x A^T) B^T`.
/// `a` and `b` are the tensors of the trainable `Var`s listed in `CausalLm::trainable`.
struct LoraAdapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl LoraAdapter {
    /// A new adapter of `weight` with PEFT's init: A ~ kaiming-uniform (here: uniform with bound
    /// 1/sqrt(in), drawn from `rng`), B = 0, so the adapted model starts exactly equal to the
    /// base. Also returns A's and B's `Var`s, in `dtype`, to train.
    fn init(
        settings: &LoraSettings,
        weight: &Tensor,
        rng: &mut SplitMix64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Var, Var)> {
        let (out_dim, in_dim) = weight.dims2()?;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let data: Vec<f32> = (0..settings.rank * in_dim)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Var::from_tensor(
            &Tensor::from_vec(data, (settings.rank, in_dim), device)?.to_dtype(dtype)?,
        )?;
        let b = Var::zeros((out_dim, settings.rank), dtype, device)?;
        let adapter = Self {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: settings.alpha / settings.rank as f64,
        };
        Ok((adapter, a, b))
    }
}

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Frozen weights get no gradient (`ops::linear` without a sink).
    frozen: bool,
    /// A trained weight's: where the fused op adds its gradient (`ops::linear`).
    sink: Option<Arc<GradSink>>,
    lora: Option<LoraAdapter>,
}

impl Linear {
    /// With fused kernels, an adapted projection is one op (`ops::lora`) where it can be.
    fn forward(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        let (b, t, i) = x.dims3()?;
        let flat = x.reshape((b * t, i))?;
        let fused_lora = self.lora.as_ref().filter(|l| {
            kernels == Kernels::Fused
                && self.frozen
                && ops::lora::fuses(&flat, &self.weight, &l.a, &l.b)
        });
        if let Some(l) = fused_lora {
            let mut y = ops::lora::lora_linear(&flat, &self.weight, &l.a, &l.b, l.scale)?;
            if let Some(bias) = &self.bias {
                y = y.broadcast_add(bias)?;
            }
            let out = y.dim(1)?;
            return y.reshape((b, t, out));
        }
        // A frozen weight never gets gradient work, whatever the kernels (`ops::linear`).
        let mut y = match (&self.sink, kernels) {
            _ if self.frozen => ops::linear::linear(&flat, &self.weight, None)?,
            (Some(sink), Kernels::Fused) => ops::linear::linear(&flat, &self.weight, Some(sink))?,
            _ => ops::linear::linear_composed(&flat, &self.weight)?,
        };
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        if let Some(l) = &self.lora {
            // Adapters may be f32 under a half-precision base: compute them in their own dtype.
            let x_a = flat.to_dtype(l.a.dtype())?;
            // Scale the rank-r intermediate, not the output-sized delta: one large tensor fewer.
            let low = (x_a.matmul(&l.a.t()?)? * l.scale)?;
            let delta = low.matmul(&l.b.t()?)?.to_dtype(y.dtype())?;
            y = (y + delta)?;
        }
        let out = y.dim(1)?;
        y.reshape((b, t, out))
    }

    /// Folds the adapter into the weight (`W + scale * B A`) when both have the same dtype;
    /// otherwise leaves it as it is. For a detached (evaluation) copy only: the result is a new
    /// weight tensor that no optimizer sees.
    fn merge_adapter(&mut self) -> candle_core::Result<()> {
        let Some(l) = self
            .lora
            .as_ref()
            .filter(|l| l.a.dtype() == self.weight.dtype())
        else {
            return Ok(());
        };
        let delta = (l.b.matmul(&l.a)? * l.scale)?;
        self.weight = (&self.weight + delta)?.detach();
        self.lora = None;
        Ok(())
    }
}

struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Fused (`ops::rms_norm`, with its own backward) or composed from basic ops so that gradients
    /// flow (candle-nn's fused kernel has no backward). Half precision is normalised in f32, as
    /// transformers does.
    fn forward(&self, x: &Tensor, kernels: Kernels) -> candle_core::Result<Tensor> {
        match kernels {
            Kernels::Fused => ops::rms_norm::rms_norm(x, &self.weight, self.eps),
            Kernels::Composed => ops::rms_norm::rms_norm_composed(x, &self.weight, self.eps),
        }
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Qwen3's per-head RMSNorm of queries and keys (`q_norm`, `k_norm`), before rotary positions.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A Llama-style causal language model whose every weight is either a trainable `Var` or a frozen
/// tensor, according to the training method.
pub struct CausalLm {
    pub config: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    /// The head methods' classification head (labels, hidden), trained: `with_score_head`.
    score: Option<Tensor>,
    /// Trainable parameters by checkpoint name: HF names for full training, PEFT names for LoRA.
    trainable: Vec<(String, Var)>,
    /// `trainable[i]`'s gradient sink, where fused ops add its gradient instead of candle's
    /// gradient store (`gradients` reads both).
    sinks: Vec<Option<Arc<GradSink>>>,
    /// The trained embedding's and head's sinks (one and the same when tied).
    embed_sink: Option<Arc<GradSink>>,
    head_sink: Option<Arc<GradSink>>,
    lora: Option<LoraSettings>,
    device: Device,
    /// Fused or composed inner operations (`ops::effective` for this device).
    kernels: Kernels,
}

/// Which weights train.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Every weight (sft, post_pretrain).
    All,
    /// Base frozen; adapters only.
    Lora(LoraSettings),
}

impl CausalLm {
    /// Random initialisation (normal, std 0.02, like HF's `initializer_range`), reproducible by seed.
    pub fn random_weights(
        config: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut rng = SplitMix64::new(seed);
        let mut weights = HashMap::new();
        for (name, shape) in weight_shapes(config) {
            let tensor = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), dtype, device)?
            } else {
                let n: usize = shape.iter().product();
                let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * 0.02).collect();
                Tensor::from_vec(data, shape.as_slice(), device)?.to_dtype(dtype)?
            };
            weights.insert(name, tensor);
        }
        Ok(weights)
    }

    /// Builds the model from named weights (HF names). `source` names the file in errors.
    pub fn new(
        config: ModelConfig,
        weights: &HashMap<String, Tensor>,
        trainable: Trainable,
        seed: u64,
        device: &Device,
        source: &str,
    ) -> Result<Self> {
        // Half-precision weights (bf16/f16 folders) are computed in f32 on the CPU, in their own
        // precision on a GPU.
        let dtype = match weights.get("model.embed_tokens.weight").map(|t| t.dtype()) {
            Some(DType::BF16 | DType::F16) if matches!(device, Device::Cpu) => DType::F32,
            Some(d) => d,
            None => DType::F32,
        };
        Self::with_compute_dtype(config, weights, trainable, seed, device, source, dtype)
    }

    /// As `new`, computing in `dtype`. LoRA adapters (and so their optimizer state) stay f32
    /// when the base is half precision: their small updates would vanish in bf16.
    pub fn with_compute_dtype(
        config: ModelConfig,
        weights: &HashMap<String, Tensor>,
        trainable: Trainable,
        seed: u64,
        device: &Device,
        source: &str,
        dtype: DType,
    ) -> Result<Self> {
        config.validate(source)?;
        let adapter_dtype = if is_half(dtype) { DType::F32 } else { dtype };
        let train_all = trainable == Trainable::All;
        let lora = match &trainable {
            Trainable::Lora(s) => Some(s.clone()),
            Trainable::All => None,
        };
        let mut trainable_vars = Vec::new();
        let mut sinks: HashMap<String, Arc<GradSink>> = HashMap::new();
        let mut rng = SplitMix64::new(seed ^ 0x10_4a);
        let shapes: BTreeMap<String, Vec<usize>> = weight_shapes(&config).into_iter().collect();
        // Each weight by name, checked against the shape the config gives it.
        let mut take = |name: &str| -> Result<Tensor> {
            let expected = shapes.get(name).cloned().unwrap_or_default();
            let t = checked_tensor(weights, name, &expected, source)?;
            let t = t.to_dtype(dtype)?.to_device(device)?;
            if train_all {
                let var = Var::from_tensor(&t)?;
                let tensor = var.as_tensor().clone();
                trainable_vars.push((name.to_string(), var));
                Ok(tensor)
            } else {
                Ok(t)
            }
        };
        let embed = take("model.embed_tokens.weight")?;
        let mut new_sink = |name: &str| {
            train_all.then(|| {
                let sink = GradSink::new();
                sinks.insert(name.to_string(), sink.clone());
                sink
            })
        };
        let embed_sink = new_sink("model.embed_tokens.weight");
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let mut adapters: Vec<(String, Var)> = Vec::new();
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linear = |module: &str, kind: &str| -> Result<Linear> {
                let name = format!("{p}.{kind}.{module}.weight");
                let weight = take(&name)?;
                let lora = match &lora {
                    Some(s) if s.targets.iter().any(|t| t == module) => {
                        let peft = format!("base_model.model.{p}.{kind}.{module}");
                        let (adapter, a, b) =
                            LoraAdapter::init(s, &weight, &mut rng, adapter_dtype, device)?;
                        adapters.push((format!("{peft}.lora_A.weight"), a));
                        adapters.push((format!("{peft}.lora_B.weight"), b));
                        Some(adapter)
                    }
                    _ => None,
                };
                let bias = if config.has_bias(module) {
                    let bias_name = format!("{p}.{kind}.{module}.bias");
                    Some(take(&bias_name)?)
                } else {
                    None
                };
                let sink = new_sink(&name);
                Ok(Linear {
                    weight,
                    bias,
                    frozen: !train_all,
                    sink,
                    lora,
                })
            };
            let q = linear("q_proj", "self_attn")?;
            let k = linear("k_proj", "self_attn")?;
            let v = linear("v_proj", "self_attn")?;
            let o = linear("o_proj", "self_attn")?;
            let gate = linear("gate_proj", "mlp")?;
            let up = linear("up_proj", "mlp")?;
            let down = linear("down_proj", "mlp")?;
            let in_name = format!("{p}.input_layernorm.weight");
            let post_name = format!("{p}.post_attention_layernorm.weight");
            let qk_norm = if config.has_qk_norm() {
                let mut head_norm = |which: &str| -> Result<RmsNorm> {
                    let name = format!("{p}.self_attn.{which}.weight");
                    Ok(RmsNorm {
                        weight: take(&name)?,
                        eps: config.rms_norm_eps,
                    })
                };
                Some((head_norm("q_norm")?, head_norm("k_norm")?))
            } else {
                None
            };
            layers.push(Layer {
                input_norm: RmsNorm {
                    weight: take(&in_name)?,
                    eps: config.rms_norm_eps,
                },
                q,
                k,
                v,
                o,
                qk_norm,
                post_norm: RmsNorm {
                    weight: take(&post_name)?,
                    eps: config.rms_norm_eps,
                },
                gate,
                up,
                down,
            });
        }
        let norm = RmsNorm {
            weight: take("model.norm.weight")?,
            eps: config.rms_norm_eps,
        };
        let (lm_head, head_sink) = if config.tie_word_embeddings {
            (embed.clone(), embed_sink.clone())
        } else {
            (take("lm_head.weight")?, new_sink("lm_head.weight"))
        };
        trainable_vars.extend(adapters);
        let sinks = trainable_vars
            .iter()
            .map(|(name, _)| sinks.get(name).cloned())
            .collect();
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            score: None,
            trainable: trainable_vars,
            sinks,
            embed_sink,
            head_sink,
            lora,
            device: device.clone(),
            kernels: ops::effective(Kernels::default(), device),
        })
    }

    /// The same model computing with `kernels` (as far as `ops::effective` allows on its device).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = ops::effective(kernels, &self.device);
        self
    }

    /// Which implementation of the inner operations this model computes with.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }
    pub fn lora_settings(&self) -> Option<&LoraSettings> {
        self.lora.as_ref()
    }

    /// The model with a trained classification head starting at `weight` (labels, hidden):
    /// transformers' `score.weight`, or PEFT's `base_model.model.score.weight` beside LoRA
    /// adapters (f32 over a half-precision base, as they are). Its gradient comes from candle's
    /// store. An untied language-model head stops training: no head method's loss reaches it.
    pub fn with_score_head(mut self, weight: &Tensor) -> Result<Self> {
        let dtype = match self.lora {
            Some(_) if is_half(self.dtype()) => DType::F32,
            _ => self.dtype(),
        };
        let var = Var::from_tensor(&weight.to_dtype(dtype)?.to_device(&self.device)?)?;
        if let Some(i) = self
            .trainable
            .iter()
            .position(|(n, _)| n == "lm_head.weight")
        {
            self.trainable.remove(i);
            self.sinks.remove(i);
            self.head_sink = None;
            self.lm_head = self.lm_head.detach();
        }
        let name = match self.lora {
            Some(_) => "base_model.model.score.weight",
            None => "score.weight",
        };
        self.score = Some(var.as_tensor().clone());
        self.trainable.push((name.to_string(), var));
        self.sinks.push(None);
        Ok(self)
    }

    /// The classification head, when the model has one (`with_score_head`).
    pub fn score_head(&self) -> Option<&Tensor> {
        self.score.as_ref()
    }

    /// The parameters the optimizer updates, with their checkpoint names.
    pub fn trainable(&self) -> &[(String, Var)] {
        &self.trainable
    }

    /// The gradient of each `trainable()` parameter after `backward` gave `store`, in the same
    /// order (None where nothing reached it): from the store, plus what fused ops added to the
    /// parameter's sink since the last call (which empties the sinks).
    pub fn gradients(&self, store: &GradStore) -> candle_core::Result<Vec<Option<Tensor>>> {
        self.trainable
            .iter()
            .zip(&self.sinks)
            .map(|((_, var), sink)| {
                let stored = store.get(var.as_tensor()).cloned();
                let sunk = match sink {
                    Some(sink) => sink.take(var.shape())?,
                    None => None,
                };
                Ok(match (stored, sunk) {
                    (Some(a), Some(b)) => Some((a + b)?),
                    (a, b) => a.or(b),
                })
            })
            .collect()
    }

    /// Empties the gradient sinks (what a failed step may have left there).
    pub fn clear_gradients(&self) -> candle_core::Result<()> {
        self.sinks.iter().flatten().try_for_each(|s| s.clear())
    }

    pub fn trainable_parameter_count(&self) -> usize {
        self.trainable.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Logits for every position: `ids` is (batch, seq) u32, the result (batch, seq, vocab).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.hidden_states(ids)?;
        self.logits(&hidden.reshape((b * t, self.config.hidden_size))?)?
            .reshape((b, t, self.config.vocab_size))
    }

    /// The final-norm hidden state of every position: (batch, seq, hidden).
    pub fn hidden_states(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let t = ids.dim(1)?;
        let positions: Vec<usize> = (0..t).collect();
        let mask = causal_mask(t, self.dtype(), &self.device)?;
        Ok(self.forward_with_past(ids, &[], &positions, &mask)?.0)
    }

    /// The hidden states of `ids` (batch, t) that continue after `past` (the keys and values of
    /// earlier positions, in order: each of batch 1, shared by every row, or of `batch`), and the
    /// keys and values of these tokens.
    /// `positions` gives each token's position, `t` of them (the same for every row) or
    /// `batch * t`; `mask` is added to the attention scores, (t, past + t) or
    /// (batch, t, past + t): 0 where a token may attend, -inf where not.
    ///
    /// Why: what shared-prefix training and scoring are built on. A prefix that many sequences
    /// share is computed once, and its keys and values serve every one of them; gradients flow
    /// back into the prefix through them.
    pub fn forward_with_past(
        &self,
        ids: &Tensor,
        past: &[&KvCache],
        positions: &[usize],
        mask: &Tensor,
    ) -> candle_core::Result<(Tensor, KvCache)> {
        let (b, t) = ids.dims2()?;
        if let Some(window) = self.config.attention_window() {
            // Within the window, sliding-window attention is full causal attention.
            if let Some(p) = positions.iter().find(|p| **p >= window) {
                candle_core::bail!(
                    "position {p} is beyond {}'s sliding_window {window}: sequences longer than the window are not supported (set max_seq_len to at most {window})",
                    self.config.model_type
                );
            }
        }
        let mut x = match (&self.embed_sink, self.kernels) {
            (Some(sink), Kernels::Fused) => ops::embedding::embedding(ids, &self.embed, sink)?,
            _ => ops::embedding::embedding_composed(ids, &self.embed)?,
        };
        let (cos, sin) = self.rope_tables(positions, b, t)?;
        let mask = match mask.rank() {
            3 => mask.unsqueeze(1)?,
            _ => mask.clone(),
        };
        let mut cache = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let normed = layer.input_norm.forward(&x, self.kernels)?;
            let layer_past: Vec<&(Tensor, Tensor)> = past.iter().map(|p| &p.layers[i]).collect();
            let (attn, kv) = self.attention(layer, &normed, &cos, &sin, &mask, &layer_past)?;
            cache.push(kv);
            x = (residual + attn)?;
            let residual = x.clone();
            let normed = layer.post_norm.forward(&x, self.kernels)?;
            let k = self.kernels;
            let (gate, up) = (
                layer.gate.forward(&normed, k)?,
                layer.up.forward(&normed, k)?,
            );
            let act = match k {
                Kernels::Fused => ops::swiglu::swiglu(&gate, &up)?,
                Kernels::Composed => ops::swiglu::swiglu_composed(&gate, &up)?,
            };
            let mlp = layer.down.forward(&act, k)?;
            x = (residual + mlp)?;
        }
        Ok((
            self.norm.forward(&x, self.kernels)?,
            KvCache { layers: cache },
        ))
    }

    /// The same model with every weight detached from the autograd graph: computing with it
    /// records no backward operations (candle has no no-grad mode). Shares the weights' storage,
    /// so it is cheap, and it sees later optimizer steps only if made again.
    pub fn detached(&self) -> CausalLm {
        let linear = |l: &Linear| Linear {
            weight: l.weight.detach(),
            bias: l.bias.as_ref().map(|b| b.detach()),
            frozen: true,
            sink: None,
            lora: l.lora.as_ref().map(|a| LoraAdapter {
                a: a.a.detach(),
                b: a.b.detach(),
                scale: a.scale,
            }),
        };
        let norm = |n: &RmsNorm| RmsNorm {
            weight: n.weight.detach(),
            eps: n.eps,
        };
        CausalLm {
            config: self.config.clone(),
            embed: self.embed.detach(),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    input_norm: norm(&l.input_norm),
                    q: linear(&l.q),
                    k: linear(&l.k),
                    v: linear(&l.v),
                    o: linear(&l.o),
                    qk_norm: l.qk_norm.as_ref().map(|(q, k)| (norm(q), norm(k))),
                    post_norm: norm(&l.post_norm),
                    gate: linear(&l.gate),
                    up: linear(&l.up),
                    down: linear(&l.down),
                })
                .collect(),
            norm: norm(&self.norm),
            lm_head: self.lm_head.detach(),
            score: self.score.as_ref().map(|s| s.detach()),
            trainable: Vec::new(),
            sinks: Vec::new(),
            embed_sink: None,
            head_sink: None,
            lora: self.lora.clone(),
            device: self.device.clone(),
            kernels: self.kernels,
        }
    }

    /// `detached`, with every LoRA adapter merged into its projection: `W + scale * B A`, made
    /// once here (new tensors; the trained weights and adapters are untouched), where the
    /// adapter has the base's dtype. An adapter kept in f32 under a half-precision base stays
    /// separate: merged into bf16 its small product would round away.
    ///
    /// Why: what evaluation computes with. Unmerged, every adapted projection of every scored
    /// token runs two rank-sized products besides the base one; merged, a LoRA model's
    /// evaluation costs what the same model's sft evaluation does. Equal to `detached` up to
    /// rounding (the sum is formed in a different order).
    pub fn for_evaluation(&self) -> candle_core::Result<CausalLm> {
        let mut model = self.detached();
        for layer in &mut model.layers {
            for linear in [
                &mut layer.q,
                &mut layer.k,
                &mut layer.v,
                &mut layer.o,
                &mut layer.gate,
                &mut layer.up,
                &mut layer.down,
            ] {
                linear.merge_adapter()?;
            }
        }
        Ok(model)
    }

    /// Vocabulary logits for hidden states of shape (n, hidden): (n, vocab). Computing them only
    /// where the loss counts saves most of the work when the vocabulary is large and answers short.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        if self.lora.is_some() {
            ops::linear::linear(hidden, &self.lm_head, None)
        } else {
            hidden.matmul(&self.lm_head.t()?)
        }
    }

    /// The log-probabilities of `wanted[i]`'s tokens after hidden state row i of `hidden` (n,
    /// hidden), with no gradient: evaluation's label scoring. With fused kernels the
    /// vocabulary-sized logits exist a block at a time (`ops::cross_entropy`).
    pub fn chosen_log_probs(
        &self,
        hidden: &Tensor,
        wanted: &[Vec<u32>],
    ) -> candle_core::Result<Vec<Vec<f64>>> {
        let head = self.lm_head.detach();
        match self.kernels {
            Kernels::Fused => ops::cross_entropy::chosen_log_probs(hidden, &head, wanted),
            Kernels::Composed => {
                ops::cross_entropy::composed_chosen_log_probs(hidden, &head, wanted)
            }
        }
    }

    /// The negative log-likelihood of `targets` (n,) at hidden states (n, hidden), from the
    /// head's logits without keeping them (`ops::cross_entropy`): what `logits` and a
    /// log-softmax give, in one pass. The head gets a gradient only when it trains. For f32/f64
    /// CPU tensors (`ops::cpu::runs_fused`).
    pub fn head_nll(&self, hidden: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let sink = self
            .head_sink
            .as_ref()
            .filter(|_| self.kernels == Kernels::Fused);
        ops::cross_entropy::linear_nll(hidden, &self.lm_head, targets, sink)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        past: &[&(Tensor, Tensor)],
    ) -> candle_core::Result<(Tensor, (Tensor, Tensor))> {
        let (b, t, _) = x.dims3()?;
        let nh = self.config.num_attention_heads;
        let nkv = self.config.kv_heads();
        let hd = self.config.head_dim();
        // (b, heads, t, hd), Qwen3's head norms applied, in the layout the rotation expects.
        let heads = |proj: &Linear, n: usize, norm: Option<&RmsNorm>| {
            let mut h = proj.forward(x, self.kernels)?.reshape((b, t, n, hd))?;
            if let Some(norm) = norm {
                h = norm.forward(&h, self.kernels)?;
            }
            let h = h.transpose(1, 2)?.contiguous()?;
            if self.config.interleaved_rope() {
                deinterleave(&h)
            } else {
                Ok(h)
            }
        };
        let q = heads(&layer.q, nh, layer.qk_norm.as_ref().map(|(q, _)| q))?;
        let k = heads(&layer.k, nkv, layer.qk_norm.as_ref().map(|(_, k)| k))?;
        let v = layer
            .v
            .forward(x, self.kernels)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = apply_rope(&q, cos, sin, self.kernels)?;
        let k = apply_rope(&k, cos, sin, self.kernels)?;
        let scale = 1.0 / (hd as f64).sqrt();
        // Scoring (nothing records gradients) after a past of batch 1 that serves every row:
        // each row reads its one copy instead of a broadcast concatenated per row.
        let shared = match past.first() {
            Some((pk, pv)) if pk.dim(0)? == 1 && b > 1 && self.kernels == Kernels::Fused => {
                let tracked = [&q, &k, pk, pv].iter().any(|x| x.track_op());
                (!tracked).then_some((pk, pv))
            }
            _ => None,
        };
        let rest = match shared {
            Some(_) => &past[1..],
            None => past,
        };
        let (k_all, v_all) = if rest.is_empty() {
            (k.clone(), v.clone())
        } else {
            // A past of batch 1 serves every row: broadcast, whose backward sums the rows'
            // gradients into the one shared prefix.
            let widen = |x: &Tensor| -> candle_core::Result<Tensor> {
                let (pb, _, p, _) = x.dims4()?;
                if pb == b {
                    Ok(x.clone())
                } else {
                    x.broadcast_as((b, nkv, p, hd))
                }
            };
            let mut ks = rest
                .iter()
                .map(|(pk, _)| widen(pk))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let mut vs = rest
                .iter()
                .map(|(_, pv)| widen(pv))
                .collect::<candle_core::Result<Vec<_>>>()?;
            ks.push(k.clone());
            vs.push(v.clone());
            (Tensor::cat(&ks, 2)?, Tensor::cat(&vs, 2)?)
        };
        let out = match (shared, self.kernels) {
            (Some(prefix), _) => ops::attention::attention_after_shared_prefix(
                &q, prefix, &k_all, &v_all, mask, scale,
            )?,
            (None, Kernels::Fused) => ops::attention::attention(&q, &k_all, &v_all, mask, scale)?,
            (None, Kernels::Composed) => {
                ops::attention::composed_attention(&q, &k_all, &v_all, mask, scale)?
            }
        };
        let out = out.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        Ok((layer.o.forward(&out, self.kernels)?, (k, v)))
    }

    /// cos/sin tables for `positions`: (t, head_dim) when they are one row's, (batch, 1, t,
    /// head_dim) when every row has its own; HF's "rotate half" layout.
    fn rope_tables(
        &self,
        positions: &[usize],
        b: usize,
        t: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let half = hd / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (self.config.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * hd);
        let mut sin = Vec::with_capacity(positions.len() * hd);
        for pos in positions {
            for _half in 0..2 {
                for f in &inv {
                    let angle = *pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let dtype = self.dtype();
        let shape: Vec<usize> = if positions.len() == t {
            vec![t, hd]
        } else if positions.len() == b * t {
            vec![b, 1, t, hd]
        } else {
            candle_core::bail!(
                "{} positions for a batch of {b} x {t} tokens",
                positions.len()
            )
        };
        Ok((
            Tensor::from_vec(cos, shape.as_slice(), &self.device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, shape.as_slice(), &self.device)?.to_dtype(dtype)?,
        ))
    }

    /// Sets the LoRA adapters from tensors with PEFT's names (an `adapter_model.safetensors`).
    pub fn load_adapters(&self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        if self.lora.is_none() {
            return Err(ModelError::Config {
                file: source.to_string(),
                message: "adapters can only be loaded into a LoRA model".into(),
            });
        }
        for (name, var) in &self.trainable {
            let t = checked_tensor(tensors, name, var.dims(), source)?;
            var.set(&t.to_dtype(var.dtype())?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Current trainable values by checkpoint name (for saving).
    pub fn trainable_tensors(&self) -> Vec<(String, Tensor)> {
        self.trainable
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// All base weights by HF name, as the model uses them now (for full checkpoints).
    pub fn base_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_norm.weight.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_norm.weight.clone(),
            ));
            if let Some((q_norm, k_norm)) = &l.qk_norm {
                out.push((
                    format!("{p}.self_attn.q_norm.weight"),
                    q_norm.weight.clone(),
                ));
                out.push((
                    format!("{p}.self_attn.k_norm.weight"),
                    k_norm.weight.clone(),
                ));
            }
            for (kind, module, lin) in [
                ("self_attn", "q_proj", &l.q),
                ("self_attn", "k_proj", &l.k),
                ("self_attn", "v_proj", &l.v),
                ("self_attn", "o_proj", &l.o),
                ("mlp", "gate_proj", &l.gate),
                ("mlp", "up_proj", &l.up),
                ("mlp", "down_proj", &l.down),
            ] {
                out.push((format!("{p}.{kind}.{module}.weight"), lin.weight.clone()));
                if let Some(bias) = &lin.bias {
                    out.push((format!("{p}.{kind}.{module}.bias"), bias.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        out
    }
}

/// The tensor `name` of `tensors`, or an error naming the file and tensor when it is missing or
/// not of the `expected` shape.
fn checked_tensor<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
    expected: &[usize],
    source: &str,
) -> Result<&'a Tensor> {
    let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
        file: source.to_string(),
        name: name.to_string(),
    })?;
    if t.dims() != expected {
        return Err(ModelError::Shape {
            file: source.to_string(),
            name: name.to_string(),
            found: t.dims().to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(t)
}

fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// The keys and values of some positions, per layer, after rotary positions and before grouped
/// heads are repeated: (batch, kv_heads, positions, head_dim) each.
#[derive(Clone)]
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An additive attention mask from a boolean one, `allowed` row-major of `shape`.
pub fn additive_mask(
    allowed: &[bool],
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = allowed
        .iter()
        .map(|a| if *a { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
}

/// Additive mask (t, past + t) for `t` tokens after `past` others: each sees every past position
/// and, causally, the tokens before it.
pub fn prefix_causal_mask(
    past: usize,
    t: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let allowed: Vec<bool> = (0..t)
        .flat_map(|i| (0..past + t).map(move |j| j < past || j - past <= i))
        .collect();
    additive_mask(&allowed, &[t, past + t], dtype, device)
}

/// Additive mask (seq, seq): 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (t, t), device)?.to_dtype(dtype)
}

/// The head dimensions of `x` (.., hd) reordered evens first, then odds: rotating interleaved
/// pairs (x0, x1), (x2, x3)... (ERNIE 4.5, GLM) is rotating the halves of the reordered vector.
/// Queries and keys are reordered alike, so their dot products, and attention, are unchanged;
/// values are not reordered, and the keys are kept reordered only inside our own `KvCache`.
fn deinterleave(x: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&hd, outer)) = dims.split_last() else {
        return Ok(x.clone());
    };
    let mut pairs = outer.to_vec();
    pairs.extend([hd / 2, 2]);
    let rank = pairs.len();
    x.reshape(pairs)?
        .transpose(rank - 2, rank - 1)?
        .contiguous()?
        .reshape(dims)
}

/// Rotary positions, HF "rotate half" convention: fused (`ops::rope`, with its own backward) or
/// composed from differentiable ops.
fn apply_rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    kernels: Kernels,
) -> candle_core::Result<Tensor> {
    match kernels {
        Kernels::Fused => ops::rope::rope(x, cos, sin),
        Kernels::Composed => ops::rope::rope_composed(x, cos, sin),
    }
}

/// Loads a Hugging Face model folder's config.json and safetensors weights (single file or shards).
pub fn load_hf_folder(
    dir: &Path,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let config = read_checked_config(dir)?;
    let mut files = Vec::new();
    let single = dir.join("model.safetensors");
    if single.exists() {
        files.push(single);
    } else {
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|_| {
            ModelError::Io(format!(
                "{}: no model.safetensors nor model.safetensors.index.json",
                dir.display()
            ))
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            file: index.display().to_string(),
            message: e.to_string(),
        })?;
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        files.extend(shards.into_iter().map(|s| dir.join(s)));
    }
    // Memory-mapped: each tensor is built straight from the mapped file, never from a copy of
    // the whole file in memory (candle's CPU tensors own their data, so one copy remains).
    let mut weights = HashMap::new();
    for f in files {
        // SAFETY: the file is mapped read-only; sweep never writes a model folder it reads from,
        // and a model folder must not change while a trial loads it.
        let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::new(&f) }
            .map_err(|e| ModelError::Io(format!("{}: {e}", f.display())))?;
        for (name, _) in mapped.tensors() {
            let tensor = mapped
                .load(&name, device)
                .map_err(|e| ModelError::Io(format!("{}: tensor `{name}`: {e}", f.display())))?;
            weights.insert(name, tensor);
        }
    }
    Ok((config, weights))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Largest absolute difference between two f32 tensors of one shape.
    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    pub(crate) fn tiny_config(vocab: usize) -> ModelConfig {
        ModelConfig {
            model_type: "llama".into(),
            vocab_size: vocab,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            pad_token_id: Some(0),
            attention_bias: false,
            rope_parameters: None,
            rope_scaling: None,
            use_sliding_window: false,
            head_dim: None,
            mlp_bias: false,
            use_bias: false,
            sliding_window: None,
            hidden_act: None,
        }
    }

    #[test]
    fn forward_shapes_and_causality() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let w = CausalLm::random_weights(&cfg, 1, DType::F32, &dev).unwrap();
        let m = CausalLm::new(cfg, &w, Trainable::All, 1, &dev, "test").unwrap();
        let a = Tensor::new(&[[3u32, 4, 5, 6]], &dev).unwrap();
        let b = Tensor::new(&[[3u32, 4, 9, 9]], &dev).unwrap();
        let la = m.forward(&a).unwrap();
        let lb = m.forward(&b).unwrap();
        assert_eq!(la.dims(), &[1, 4, 11]);
        // Positions 0 and 1 cannot see the later tokens that differ.
        let d = max_abs_diff(&la.narrow(1, 0, 2).unwrap(), &lb.narrow(1, 0, 2).unwrap());
        assert!(d < 1e-6, "future tokens leaked into the past: {d}");
        let d2 = max_abs_diff(&la.narrow(1, 2, 1).unwrap(), &lb.narrow(1, 2, 1).unwrap());
        assert!(d2 > 1e-6, "position 2 should see its own token");
    }

    #[test]
    fn loads_a_bf16_folder_with_transformers5_rope_parameters_and_refuses_rope_scaling() {
        let dev = Device::Cpu;
        let mut cfg = tiny_config(11);
        cfg.model_type = "qwen2".into();
        let weights = CausalLm::random_weights(&cfg, 5, DType::F32, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bf16: HashMap<String, Tensor> = weights
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(DType::BF16).unwrap()))
            .collect();
        candle_core::safetensors::save(&bf16, dir.path().join("model.safetensors")).unwrap();
        let mut json = serde_json::to_value(&cfg).unwrap();
        json.as_object_mut().unwrap().remove("rope_theta");
        json["rope_parameters"] =
            serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"});
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        let (loaded, w) = load_hf_folder(dir.path(), &dev).unwrap();
        assert_eq!(loaded.rope_theta, 500000.0);
        let m = CausalLm::new(loaded, &w, Trainable::All, 1, &dev, "t").unwrap();
        assert_eq!(
            m.dtype(),
            DType::F32,
            "half precision is computed in f32 on the CPU"
        );
        let ids = Tensor::new(&[[1u32, 4, 5]], &dev).unwrap();
        assert_eq!(m.forward(&ids).unwrap().dims(), &[1, 3, 11]);

        json["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        let err = load_hf_folder(dir.path(), &dev).err().unwrap().to_string();
        assert!(err.contains("config.json: rope_scaling: `llama3`"), "{err}");

        json["model_type"] = serde_json::json!("gemma3");
        json["rope_scaling"] = serde_json::Value::Null;
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        let err = load_hf_folder(dir.path(), &dev).err().unwrap().to_string();
        assert!(
            err.contains("model_type: `gemma3` is not supported"),
            "{err}"
        );
    }

    #[test]
    fn mistral_equals_llama_within_its_window_and_refuses_beyond_it() {
        let dev = Device::Cpu;
        let llama = tiny_config(11);
        let mut mistral = llama.clone();
        mistral.model_type = "mistral".into();
        mistral.sliding_window = Some(4);
        let w = CausalLm::random_weights(&llama, 6, DType::F32, &dev).unwrap();
        let a = CausalLm::new(llama, &w, Trainable::All, 1, &dev, "t").unwrap();
        let b = CausalLm::new(mistral, &w, Trainable::All, 1, &dev, "t").unwrap();
        let ids = Tensor::new(&[[1u32, 4, 5, 6]], &dev).unwrap();
        let d = max_abs_diff(&a.forward(&ids).unwrap(), &b.forward(&ids).unwrap());
        assert_eq!(d, 0.0);
        let long = Tensor::new(&[[1u32, 4, 5, 6, 7]], &dev).unwrap();
        let err = b.forward(&long).unwrap_err().to_string();
        assert!(
            err.contains("position 4 is beyond mistral's sliding_window 4"),
            "{err}"
        );
    }

    #[test]
    fn deinterleave_puts_even_dimensions_first() {
        let x = Tensor::new(&[[[[0f32, 1., 2., 3., 4., 5.]]]], &Device::Cpu).unwrap();
        let y = deinterleave(&x).unwrap().flatten_all().unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0., 2., 4., 1., 3., 5.]);
    }

    #[test]
    fn a_bf16_base_trains_f32_adapters() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let w = CausalLm::random_weights(&cfg, 4, DType::BF16, &dev).unwrap();
        let lora = LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "up_proj".into()],
        };
        let m =
            CausalLm::with_compute_dtype(cfg, &w, Trainable::Lora(lora), 1, &dev, "t", DType::BF16)
                .unwrap();
        assert_eq!(m.dtype(), DType::BF16);
        assert!(m.trainable().iter().all(|(_, v)| v.dtype() == DType::F32));
        for (name, var) in m.trainable() {
            if name.contains("lora_B") {
                var.set(&Tensor::ones(var.shape(), DType::F32, &dev).unwrap())
                    .unwrap();
            }
        }
        let ids = Tensor::new(&[[1u32, 4, 5, 6]], &dev).unwrap();
        let loss = m
            .forward(&ids)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in m.trainable() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(g.dtype(), DType::F32);
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm.is_finite() && norm > 0.0, "{name}: {norm}");
        }
    }

    #[test]
    fn loads_sharded_safetensors_through_their_index() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let weights = CausalLm::random_weights(&cfg, 8, DType::F32, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        let (first, second) = names.split_at(names.len() / 2);
        let mut map = serde_json::Map::new();
        for (file, part) in [
            ("model-00001-of-00002.safetensors", first),
            ("model-00002-of-00002.safetensors", second),
        ] {
            let shard: HashMap<String, Tensor> = part
                .iter()
                .map(|n| ((*n).clone(), weights[*n].clone()))
                .collect();
            candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
            for n in part.iter() {
                map.insert((*n).clone(), serde_json::json!(file));
            }
        }
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let (_, loaded) = load_hf_folder(dir.path(), &dev).unwrap();
        assert_eq!(loaded.len(), weights.len());
        for (n, t) in &weights {
            assert_eq!(max_abs_diff(t, &loaded[n]), 0.0, "{n}");
        }
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let mut w = CausalLm::random_weights(&cfg, 1, DType::F32, &dev).unwrap();
        w.remove("model.layers.1.mlp.up_proj.weight");
        let err = CausalLm::new(cfg.clone(), &w, Trainable::All, 1, &dev, "m.safetensors")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
        let mut w = CausalLm::random_weights(&cfg, 1, DType::F32, &dev).unwrap();
        w.insert(
            "model.norm.weight".into(),
            Tensor::ones(7, DType::F32, &dev).unwrap(),
        );
        let err = CausalLm::new(cfg, &w, Trainable::All, 1, &dev, "m.safetensors")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model.norm.weight") && err.contains("[7]"),
            "{err}"
        );
    }

    #[test]
    fn a_detached_model_computes_the_same_and_records_no_backward_graph() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let w = CausalLm::random_weights(&cfg, 3, DType::F32, &dev).unwrap();
        let lora = LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into()],
        };
        for trainable in [Trainable::All, Trainable::Lora(lora)] {
            let m = CausalLm::new(cfg.clone(), &w, trainable, 1, &dev, "t").unwrap();
            let ids = Tensor::new(&[[1u32, 4, 5, 6]], &dev).unwrap();
            let tracked = m.forward(&ids).unwrap();
            let detached = m.detached().forward(&ids).unwrap();
            assert!(tracked.track_op(), "training records the graph");
            assert!(!detached.track_op(), "evaluation records none");
            assert_eq!(max_abs_diff(&tracked, &detached), 0.0);
        }
    }

    #[test]
    fn evaluation_merges_trained_adapters_and_computes_the_same() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let w = CausalLm::random_weights(&cfg, 3, DType::F32, &dev).unwrap();
        let lora = LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        };
        let m = CausalLm::new(cfg.clone(), &w, Trainable::Lora(lora.clone()), 1, &dev, "t")
            .unwrap()
            .with_kernels(Kernels::Fused);
        // Trained adapters: B away from its zero init, so that merging changes the weights.
        let mut rng = SplitMix64::new(9);
        for (name, var) in m.trainable() {
            if name.contains("lora_B") {
                let data: Vec<f32> = (0..var.elem_count())
                    .map(|_| rng.normal() as f32 * 0.3)
                    .collect();
                var.set(&Tensor::from_vec(data, var.dims(), &dev).unwrap())
                    .unwrap();
            }
        }
        let ids = Tensor::new(&[[1u32, 4, 5, 6], [7, 8, 9, 10]], &dev).unwrap();
        let separate = m.detached().forward(&ids).unwrap();
        let merged_model = m.for_evaluation().unwrap();
        let merged = merged_model.forward(&ids).unwrap();
        assert!(!merged.track_op(), "evaluation records no graph");
        let base = CausalLm::new(cfg.clone(), &w, Trainable::All, 1, &dev, "t").unwrap();
        assert!(
            max_abs_diff(&base.forward(&ids).unwrap(), &separate) > 1e-3,
            "the adapters change the output"
        );
        assert!(max_abs_diff(&separate, &merged) < 1e-5);
        assert!(merged_model.layers.iter().all(|l| [
            &l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down
        ]
        .iter()
        .all(|p| p.lora.is_none())));
        // The model itself keeps its adapters, and trains on as before.
        assert!(m.layers.iter().all(|l| l.q.lora.is_some()));
        assert_eq!(max_abs_diff(&m.forward(&ids).unwrap(), &separate), 0.0);
        // f32 adapters under a half-precision base stay separate (merged, they would round away).
        let half =
            CausalLm::with_compute_dtype(cfg, &w, Trainable::Lora(lora), 1, &dev, "t", DType::F16)
                .unwrap();
        assert!(half
            .for_evaluation()
            .unwrap()
            .layers
            .iter()
            .all(|l| l.q.lora.is_some() && l.down.lora.is_some()));
    }

    #[test]
    fn fused_full_training_sinks_weight_gradients_and_gradients_reads_them() {
        let dev = Device::Cpu;
        for tie in [true, false] {
            let mut cfg = tiny_config(11);
            cfg.tie_word_embeddings = tie;
            let w = CausalLm::random_weights(&cfg, 3, DType::F32, &dev).unwrap();
            let m = CausalLm::new(cfg, &w, Trainable::All, 1, &dev, "t")
                .unwrap()
                .with_kernels(Kernels::Fused);
            // Every position predicts the next token: the head's loss, as training computes it.
            let ids = Tensor::new(&[[1u32, 4, 5, 6]], &dev).unwrap();
            let hidden = m.hidden_states(&ids).unwrap().squeeze(0).unwrap();
            let targets = Tensor::new(&[4u32, 5, 6, 2], &dev).unwrap();
            let loss = m.head_nll(&hidden, &targets).unwrap().sum_all().unwrap();
            let store = loss.backward().unwrap();
            let sunk = |name: &str| {
                name.ends_with("proj.weight")
                    || name == "model.embed_tokens.weight"
                    || name == "lm_head.weight"
            };
            let grads = m.gradients(&store).unwrap();
            for ((name, var), g) in m.trainable().iter().zip(&grads) {
                let sunk = sunk(name);
                assert_eq!(
                    store.get(var.as_tensor()).is_none(),
                    sunk,
                    "{name}: in the store or in a sink"
                );
                let g = g.as_ref().unwrap_or_else(|| panic!("{name}: no gradient"));
                assert_eq!(g.dims(), var.dims(), "{name}");
            }
            // Read once: the sinks are empty after.
            let again = m.gradients(&store).unwrap();
            for ((name, _), g) in m.trainable().iter().zip(&again) {
                assert_eq!(g.is_none(), sunk(name), "{name}");
            }
        }
    }

    #[test]
    fn lora_starts_equal_to_base_and_only_adapters_train() {
        let dev = Device::Cpu;
        let cfg = tiny_config(11);
        let w = CausalLm::random_weights(&cfg, 3, DType::F32, &dev).unwrap();
        let base = CausalLm::new(cfg.clone(), &w, Trainable::All, 1, &dev, "t").unwrap();
        let lora = LoraSettings {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "down_proj".into()],
        };
        let m = CausalLm::new(cfg, &w, Trainable::Lora(lora), 1, &dev, "t").unwrap();
        let ids = Tensor::new(&[[1u32, 4, 5, 6]], &dev).unwrap();
        let d = max_abs_diff(&base.forward(&ids).unwrap(), &m.forward(&ids).unwrap());
        assert!(d < 1e-6);
        // 2 layers x 2 targets x (A, B)
        assert_eq!(m.trainable().len(), 8);
        assert!(m
            .trainable()
            .iter()
            .all(|(n, _)| n.starts_with("base_model.model.model.layers.") && n.contains(".lora_")));
    }
}
