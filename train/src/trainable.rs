//! Which parameters a fine-tuning command (`train-score`, `sft`, `dpo`) trains: everything, everything but the
//! embedding and the lower N layers, or LoRA adapters on a frozen base. One set of flags, one rule.

use crate::model::{LoraConfig, Model};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct TrainableArgs {
    /// Freeze the embedding and the lower N decoder layers.
    #[arg(long, default_value_t = 0)]
    pub freeze_layers: usize,
    /// LoRA rank (0 = no LoRA). With LoRA the base weights are frozen.
    #[arg(long, default_value_t = 0)]
    pub lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// First layer that gets LoRA adapters (lower layers run frozen, without autograd).
    #[arg(long, default_value_t = 0)]
    pub lora_from_layer: usize,
}

impl TrainableArgs {
    /// Marks what trains on a freshly loaded model: LoRA adapters when `--lora-rank` is set, else `head_only`
    /// (score models: only the head), else everything above `--freeze-layers`. A model that already carries
    /// adapters (resumed from a LoRA checkpoint, base frozen) is left as it is.
    pub fn apply(&self, model: &mut Model, head_only: bool) {
        if model.lora.is_some() {
            return;
        }
        if self.lora_rank > 0 {
            model.add_lora(LoraConfig {
                rank: self.lora_rank,
                alpha: self.lora_alpha,
                from_layer: self.lora_from_layer,
            });
        } else if head_only {
            model.freeze_all_but_head();
        } else if self.freeze_layers > 0 {
            model.freeze_lower_layers(self.freeze_layers);
        }
    }

    /// The same choice for a model of another depth — PPO's critics, initialised from score models that may keep
    /// fewer layers than the actor (`train-score --layers N`): as many top layers train (or carry adapters) as on
    /// the `reference_layers`-layer actor, instead of the same lower layers frozen, which would freeze a shorter
    /// critic whole.
    pub fn for_depth(&self, reference_layers: usize, layers: usize) -> Self {
        let lower = |n: usize| match n {
            0 => 0,
            n => layers.saturating_sub(reference_layers.saturating_sub(n)),
        };
        Self {
            freeze_layers: lower(self.freeze_layers),
            lora_from_layer: lower(self.lora_from_layer),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TrainableArgs;

    fn args(freeze_layers: usize, lora_from_layer: usize) -> TrainableArgs {
        TrainableArgs {
            freeze_layers,
            lora_rank: 0,
            lora_alpha: 16.0,
            lora_from_layer,
        }
    }

    #[test]
    fn a_shorter_critic_trains_as_many_top_layers_as_the_actor() {
        // The round's `--freeze-layers 24` on the 30-layer actor trains its top 6; a 15-layer critic trains its top 6.
        let a = args(24, 26).for_depth(30, 15);
        assert_eq!((a.freeze_layers, a.lora_from_layer), (9, 11));
        // Same depth: unchanged; nothing frozen stays nothing frozen.
        let b = args(24, 0).for_depth(30, 30);
        assert_eq!((b.freeze_layers, b.lora_from_layer), (24, 0));
        // Freezing past the actor's depth freezes the critic whole, as it does the actor.
        assert_eq!(args(40, 0).for_depth(30, 15).freeze_layers, 15);
        // More trained layers than the critic has: all of them train.
        assert_eq!(args(2, 0).for_depth(30, 15).freeze_layers, 0);
    }
}
