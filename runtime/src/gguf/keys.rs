//! The metadata keys of llama.cpp's files that llava-edge reads or writes, one constant each,
//! shared by the readers (models, tokenizer) and the writers (converter), so the two cannot
//! drift apart. `general.*` and `tokenizer.ggml.*` keys live beside their users
//! ([`crate::gguf`]'s `KEY_*`, [`crate::tokenizer`]'s `KEY_*`).

/// The chat template, as Jinja text (`tokenizer.chat_template`).
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// Keys of an LLM, after its architecture's name: `{arch}.{suffix}` ([`llm::key`]).
pub mod llm {
    /// `{arch}.{suffix}`, e.g. `llama.block_count`.
    pub fn key(arch: &str, suffix: &str) -> String {
        format!("{arch}.{suffix}")
    }

    /// Positions the model was trained with.
    pub const CONTEXT_LENGTH: &str = "context_length";
    /// Width of the hidden state.
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    /// Decoder layers.
    pub const BLOCK_COUNT: &str = "block_count";
    /// Width of the feed-forward layer.
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    /// Query heads.
    pub const HEAD_COUNT: &str = "attention.head_count";
    /// Key/value heads (grouped-query attention); absent means as many as query heads.
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    /// RMSNorm's epsilon.
    pub const RMS_EPSILON: &str = "attention.layer_norm_rms_epsilon";
    /// RoPE's base frequency (θ).
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    /// Dimensions RoPE rotates per head.
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
    /// RoPE scaling: "none" or "linear" (others are refused).
    pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
    /// The linear scaling factor (positions are divided by it).
    pub const ROPE_SCALING_FACTOR: &str = "rope.scaling.factor";
    /// The older spelling of a linear scaling factor.
    pub const ROPE_SCALE_LINEAR: &str = "rope.scale_linear";
}

/// Keys of an mmproj file (architecture `clip`).
pub mod clip {
    /// Whether the file holds a vision tower.
    pub const HAS_VISION_ENCODER: &str = "clip.has_vision_encoder";
    /// Whether the file holds a text tower (never, for LLaVA).
    pub const HAS_TEXT_ENCODER: &str = "clip.has_text_encoder";
    /// Whether the file holds a LLaVA projector.
    pub const HAS_LLAVA_PROJECTOR: &str = "clip.has_llava_projector";
    /// The projector's kind: LLaVA's "mlp".
    pub const PROJECTOR_TYPE: &str = "clip.projector_type";
    /// Exact GELU instead of CLIP's quick_gelu.
    pub const USE_GELU: &str = "clip.use_gelu";
    /// Side of a view, in pixels.
    pub const IMAGE_SIZE: &str = "clip.vision.image_size";
    /// Side of a patch, in pixels.
    pub const PATCH_SIZE: &str = "clip.vision.patch_size";
    /// Width of the tower.
    pub const EMBEDDING_LENGTH: &str = "clip.vision.embedding_length";
    /// Width of the tower's feed-forward layers.
    pub const FEED_FORWARD_LENGTH: &str = "clip.vision.feed_forward_length";
    /// Width of CLIP's own projection (unused by LLaVA, written for llama.cpp).
    pub const PROJECTION_DIM: &str = "clip.vision.projection_dim";
    /// Attention heads of the tower.
    pub const HEAD_COUNT: &str = "clip.vision.attention.head_count";
    /// LayerNorm's epsilon.
    pub const LAYER_NORM_EPSILON: &str = "clip.vision.attention.layer_norm_epsilon";
    /// Blocks stored in the file (LLaVA uses all but the last of CLIP's).
    pub const BLOCK_COUNT: &str = "clip.vision.block_count";
    /// Per-channel mean of the preprocessing.
    pub const IMAGE_MEAN: &str = "clip.vision.image_mean";
    /// Per-channel standard deviation of the preprocessing.
    pub const IMAGE_STD: &str = "clip.vision.image_std";
    /// LLaVA-1.6's pinpoints, flat (width, height) pairs.
    pub const IMAGE_GRID_PINPOINTS: &str = "clip.vision.image_grid_pinpoints";
    /// LLaVA-1.6's "spatial_unpad".
    pub const MM_PATCH_MERGE_TYPE: &str = "clip.vision.mm_patch_merge_type";
    /// LLaVA-1.6's "anyres".
    pub const IMAGE_ASPECT_RATIO: &str = "clip.vision.image_aspect_ratio";
}
