//! llava-models: the networks (LLaMA decoder, CLIP vision tower, projector) and the LLaVA
//! pipeline, written once against the runtime's `Backend` trait. Filled in by the LLM and
//! LLaVA issues; see DESIGN.md for the planned files.
