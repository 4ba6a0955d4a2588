//! Chat templates of the LLaVA models (GGUF-AND-LLAVA.md §6), rendered to one prompt string in
//! which `<image>` marks where image embeddings go.

use std::fmt;
use std::str::FromStr;

/// The marker the prompt builder replaces by image embeddings.
pub const IMAGE_MARKER: &str = "<image>";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// LLaVA-1.5's `conv_llava_v1`: the Vicuna system prompt with "human", `USER:`/`ASSISTANT:`.
    LlavaV1,
    /// `conv_vicuna_v1`: the same with "user".
    VicunaV1,
    /// LLaVA-1.6-Mistral: `[INST] … [/INST]`, no system prompt.
    MistralInstruct,
    /// LLaVA-1.6-34B's `chatml_direct`.
    Chatml,
    /// The prompt exactly as given.
    Raw,
}

impl Template {
    pub const ALL: [Template; 5] = [
        Template::LlavaV1,
        Template::VicunaV1,
        Template::MistralInstruct,
        Template::Chatml,
        Template::Raw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Template::LlavaV1 => "llava_v1",
            Template::VicunaV1 => "vicuna_v1",
            Template::MistralInstruct => "mistral_instruct",
            Template::Chatml => "chatml",
            Template::Raw => "raw",
        }
    }

    /// The template a GGUF `tokenizer.chat_template` (Jinja) stands for; LLaVA-1.5 files carry
    /// none, and get LLaVA-1.5's.
    pub fn from_chat_template(jinja: Option<&str>) -> Template {
        match jinja {
            Some(t) if t.contains("<|im_start|>") => Template::Chatml,
            Some(t) if t.contains("[INST]") => Template::MistralInstruct,
            _ => Template::LlavaV1,
        }
    }

    /// The prompt for one user turn, ending where the assistant's answer starts.
    pub fn render(self, user: &str) -> String {
        const LLAVA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
            assistant. The assistant gives helpful, detailed, and polite answers to the human's \
            questions.";
        const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence \
            assistant. The assistant gives helpful, detailed, and polite answers to the user's \
            questions.";
        match self {
            Template::LlavaV1 => format!("{LLAVA_SYSTEM} USER: {user} ASSISTANT:"),
            Template::VicunaV1 => format!("{VICUNA_SYSTEM} USER: {user} ASSISTANT:"),
            Template::MistralInstruct => format!("[INST] {user} [/INST]"),
            Template::Chatml => format!(
                "<|im_start|>system\nAnswer the questions.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
            ),
            Template::Raw => user.to_owned(),
        }
    }

    /// Text that ends the assistant's turn, to stop on besides the end-of-text token.
    pub fn stop_strings(self) -> &'static [&'static str] {
        match self {
            Template::LlavaV1 | Template::VicunaV1 => &["</s>", "USER:"],
            Template::MistralInstruct => &["</s>", "[INST]"],
            Template::Chatml => &["<|im_end|>"],
            Template::Raw => &[],
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Template, String> {
        Template::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Template::ALL.iter().map(|t| t.name()).collect();
                format!("unknown template {s:?} (one of {})", names.join(", "))
            })
    }
}

/// The user's question with one image marker per image: kept as written when the question
/// has markers, else `n_images` markers put first, each on its own line, as LLaVA does
/// (`<image>\n` + question).
pub fn with_image_markers(question: &str, n_images: usize) -> String {
    if n_images == 0 || question.contains(IMAGE_MARKER) {
        return question.to_owned();
    }
    format!("{}{question}", format!("{IMAGE_MARKER}\n").repeat(n_images))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_v1_prompt_is_the_reference_text() {
        let q = with_image_markers("What is in this picture?", 1);
        assert_eq!(
            Template::LlavaV1.render(&q),
            "A chat between a curious human and an artificial intelligence assistant. The \
             assistant gives helpful, detailed, and polite answers to the human's questions. \
             USER: <image>\nWhat is in this picture? ASSISTANT:"
        );
        assert_eq!(
            Template::MistralInstruct.render(&q),
            "[INST] <image>\nWhat is in this picture? [/INST]"
        );
    }

    #[test]
    fn markers_are_added_only_when_missing() {
        assert_eq!(with_image_markers("a <image> b", 1), "a <image> b");
        assert_eq!(with_image_markers("q", 2), "<image>\n<image>\nq");
        assert_eq!(with_image_markers("q", 0), "q");
    }

    #[test]
    fn template_is_chosen_from_the_gguf_chat_template() {
        assert_eq!(Template::from_chat_template(None), Template::LlavaV1);
        assert_eq!(
            Template::from_chat_template(Some("{{ '[INST] ' + message['content'] }}")),
            Template::MistralInstruct
        );
        assert_eq!(
            Template::from_chat_template(Some("<|im_start|>{{ m }}")),
            Template::Chatml
        );
        assert_eq!("chatml".parse::<Template>(), Ok(Template::Chatml));
        assert!("x".parse::<Template>().is_err());
    }
}
