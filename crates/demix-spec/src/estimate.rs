//! What training a model of a given shape needs in memory, before anything is
//! allocated: a check-time and a run-time guard against a configuration that
//! cannot fit (libtorch would otherwise fail deep inside an allocation).

/// A decoder's shape, in Hugging Face Qwen3 terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub vocab: u64,
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub tied: bool,
}

impl ModelShape {
    /// Parameters (embedding and, untied, the output head included).
    pub fn params(&self) -> u64 {
        let (d, hd) = (self.hidden, self.head_dim);
        let attn = d * self.heads * hd * 2 + d * self.kv_heads * hd * 2 + 2 * hd;
        let mlp = 3 * d * self.intermediate;
        let per_layer = attn + mlp + 2 * d;
        let head = if self.tied { 0 } else { self.vocab * d };
        self.vocab * d + self.layers * per_layer + d + head
    }

    /// Bytes training needs, roughly: f32 weights, gradients and AdamW's two
    /// moments (16 bytes a parameter), and the activations kept for the
    /// backward pass of `rows` sequences of `seq` tokens (the logits and
    /// their gradient included), in f32.
    pub fn training_bytes(&self, rows: u64, seq: u64) -> u64 {
        let tokens = rows.saturating_mul(seq);
        let per_token_layer = 12 * self.hidden + 4 * self.intermediate + 2 * self.heads * seq;
        let activations = tokens
            .saturating_mul(self.layers.saturating_mul(per_token_layer) + 2 * self.vocab)
            .saturating_mul(4);
        self.params().saturating_mul(16).saturating_add(activations)
    }
}

/// Memory this machine can give a new process now (`MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_1_7b_has_its_parameter_count() {
        // Qwen3-1.7B: 1.7B parameters, 1.4B of them outside the (tied) embedding.
        let s = ModelShape {
            vocab: 151_936,
            hidden: 2048,
            intermediate: 6144,
            layers: 28,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
            tied: true,
        };
        let p = s.params() as f64;
        assert!((p / 1.72e9 - 1.0).abs() < 0.01, "{p}");
        let body = p - (151_936 * 2048) as f64;
        assert!((body / 1.41e9 - 1.0).abs() < 0.01, "{body}");
        // Weights, grads and moments alone are 16 bytes a parameter.
        assert!(s.training_bytes(1, 1) >= s.params() * 16);
        // The repro of a model too large for any machine: no overflow, a huge answer.
        let huge = ModelShape {
            vocab: 4096,
            hidden: 65536,
            intermediate: 65536,
            layers: 4,
            heads: 8,
            kv_heads: 8,
            head_dim: 8192,
            tied: true,
        };
        assert!(huge.training_bytes(16, 128) > 1 << 40);
    }
}
