//! One training step computed with the fused ops equals the composed one: the loss and every
//! trainable gradient, for full training and LoRA, with and without a shared prefix, with a tied
//! and an untied head, in one micro-batch and in several (whose weight gradients the fused ops
//! sum in place, `ops::grad_sink`).

use candle_core::{DType, Device, Tensor};

use crate::spec::shape::{preset, LORA_TARGETS};
use crate::text::encode::Seq;
use crate::trainer::model::{CausalLm, LoraSettings, Trainable};
use crate::trainer::ops::Kernels;
use crate::trainer::step::shard_gradients_with;

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn a_fused_training_step_equals_the_composed_one() {
    for tie in [true, false] {
        let mut config = preset("test").unwrap();
        config.vocab_size = 40;
        config.tie_word_embeddings = tie;
        steps_agree(&config);
    }
}

fn steps_agree(config: &crate::spec::shape::ModelConfig) {
    let dev = Device::Cpu;
    let weights = CausalLm::random_weights(config, 11, DType::F32, &dev).unwrap();
    // A shared 5-token prefix, answers of different lengths (so padding), loss from position 6.
    let seq = |tail: &[u32]| Seq {
        ids: [&[1u32, 7, 8, 9, 10, 11][..], tail].concat(),
        loss_from: 6,
    };
    let seqs = [
        seq(&[12, 13, 14, 2]),
        seq(&[15, 2]),
        seq(&[16, 17, 18, 19, 20, 2]),
    ];
    let refs: Vec<&Seq> = seqs.iter().collect();
    let lora = Trainable::Lora(LoraSettings {
        rank: 2,
        alpha: 4.0,
        targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
    });
    for trainable in [Trainable::All, lora] {
        let model = |kernels| {
            let m = CausalLm::new(config.clone(), &weights, trainable.clone(), 3, &dev, "t")
                .unwrap()
                .with_kernels(kernels);
            // Non-zero adapters, so that every LoRA gradient is exercised.
            for (name, var) in m.trainable() {
                if name.contains("lora_B") {
                    var.set(&(var.as_tensor().ones_like().unwrap() * 0.01).unwrap())
                        .unwrap();
                }
            }
            m
        };
        let (fused, composed) = (model(Kernels::Fused), model(Kernels::Composed));
        assert_eq!(fused.kernels(), Kernels::Fused);
        for (share_prefix, micro) in [(true, 3), (false, 3), (true, 1), (false, 2)] {
            let f = shard_gradients_with(&fused, &refs, micro, 0, 9.0, share_prefix).unwrap();
            let c = shard_gradients_with(&composed, &refs, micro, 0, 9.0, share_prefix).unwrap();
            assert!((f.loss - c.loss).abs() < 1e-5, "{} vs {}", f.loss, c.loss);
            for ((name, _), (gf, gc)) in fused.trainable().iter().zip(f.grads.iter().zip(&c.grads))
            {
                let diff = max_abs(&(gf - gc).unwrap());
                assert!(max_abs(gc) > 0.0, "{name}: no gradient");
                assert!(
                    diff < 1e-5,
                    "{name} (prefix {share_prefix}, micro {micro}): {diff}"
                );
            }
        }
    }
}
