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
}
