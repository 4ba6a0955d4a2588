//! Chat templates of the LLaVA models (GGUF-AND-LLAVA.md §6), rendered to one prompt string in
//! which `<image>` marks where image embeddings go.

use std::fmt;
use std::str::FromStr;

/// The marker the prompt builder replaces by image embeddings.
pub const IMAGE_MARKER: &str = "<image>";

/// A chat template: how a conversation is turned into the prompt text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// LLaVA-1.5's `conv_llava_v1`: the Vicuna system prompt with "human", `USER:`/`ASSISTANT:`.
    LlavaV1,
    /// `conv_vicuna_v1`: the same with "user".
    VicunaV1,
    /// LLaVA-1.6-Mistral: `[INST] … [/INST]`, no system prompt.
    MistralInstruct,
    /// LLaVA-1.6-34B's `chatml_direct`: ChatML in LLaVA's MPT style, each `<|im_end|>`
    /// followed directly by the next `<|im_start|>` (no newline between turns, as the model was
    /// trained; llava-hf's Jinja template puts one).
    Chatml,
    /// The prompt exactly as given.
    Raw,
}

impl Template {
    /// Every template; [`FromStr`] accepts their [`name`](Template::name)s.
    pub const ALL: [Template; 5] = [
        Template::LlavaV1,
        Template::VicunaV1,
        Template::MistralInstruct,
        Template::Chatml,
        Template::Raw,
    ];

    /// The name [`FromStr`] parses back (`llava_v1`, `chatml`, ...), as `--template` takes it.
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

    /// Whether the template has a system prompt (`--system` replaces its default).
    pub fn has_system(self) -> bool {
        matches!(
            self,
            Template::LlavaV1 | Template::VicunaV1 | Template::Chatml
        )
    }

    /// The prompt for the first user turn, ending where the assistant's answer starts, with
    /// the template's default system prompt.
    pub fn render(self, user: &str) -> String {
        self.render_with_system(user, None)
    }

    /// [`Template::render`] with `system` in place of the default system prompt, where the
    /// template has one ([`Template::has_system`]; others ignore it).
    pub fn render_with_system(self, user: &str, system: Option<&str>) -> String {
        const LLAVA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
            assistant. The assistant gives helpful, detailed, and polite answers to the human's \
            questions.";
        const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence \
            assistant. The assistant gives helpful, detailed, and polite answers to the user's \
            questions.";
        match self {
            Template::LlavaV1 => format!("{} USER: {user} ASSISTANT:", system.unwrap_or(LLAVA_SYSTEM)),
            Template::VicunaV1 => format!("{} USER: {user} ASSISTANT:", system.unwrap_or(VICUNA_SYSTEM)),
            Template::MistralInstruct => format!("[INST] {user} [/INST]"),
            Template::Chatml => format!(
                "<|im_start|>system\n{}<|im_end|><|im_start|>user\n{user}<|im_end|><|im_start|>assistant\n",
                system.unwrap_or("Answer the questions.")
            ),
            Template::Raw => user.to_owned(),
        }
    }

    /// A later user turn, to follow an answer and its [`Template::end_of_turn`]: LLaVA's
    /// conversation format (`… ASSISTANT: answer</s>USER: next ASSISTANT:`).
    pub fn render_followup(self, user: &str) -> String {
        match self {
            Template::LlavaV1 | Template::VicunaV1 => format!("USER: {user} ASSISTANT:"),
            Template::MistralInstruct => format!("[INST] {user} [/INST]"),
            Template::Chatml => {
                format!("<|im_start|>user\n{user}<|im_end|><|im_start|>assistant\n")
            }
            Template::Raw => user.to_owned(),
        }
    }

    /// The text that closes an assistant's answer in the conversation (its end-of-text token),
    /// put after an answer that stopped for another reason before the next turn.
    pub fn end_of_turn(self) -> &'static str {
        match self {
            Template::LlavaV1 | Template::VicunaV1 | Template::MistralInstruct => "</s>",
            Template::Chatml => "<|im_end|>",
            Template::Raw => "",
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
    fn system_prompts_replace_the_default_and_followups_continue_the_conversation() {
        assert_eq!(
            Template::VicunaV1.render_with_system("q", Some("Be brief.")),
            "Be brief. USER: q ASSISTANT:"
        );
        // LLaVA's conv_chatml_direct: system "<|im_start|>system\nAnswer the questions.", roles
        // "<|im_start|>user\n" and "<|im_start|>assistant\n", separator "<|im_end|>", MPT style
        // (system + sep, then role + message + sep per turn, the open role last).
        assert_eq!(
            Template::Chatml.render(&with_image_markers("q", 1)),
            "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nq<|im_end|><|im_start|>assistant\n"
        );
        assert_eq!(
            Template::Chatml.render_with_system("q", Some("S")),
            "<|im_start|>system\nS<|im_end|><|im_start|>user\nq<|im_end|><|im_start|>assistant\n"
        );
        assert_eq!(
            format!(
                "{}a{}{}",
                Template::Chatml.render("q1"),
                Template::Chatml.end_of_turn(),
                Template::Chatml.render_followup("q2")
            ),
            "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nq1<|im_end|>\
             <|im_start|>assistant\na<|im_end|><|im_start|>user\nq2<|im_end|><|im_start|>assistant\n"
        );
        assert!(!Template::MistralInstruct.has_system() && !Template::Raw.has_system());
        // LLaVA's conv_llava_v1 with two turns: sep " ", sep2 "</s>".
        let two_turns = format!(
            "{} a{}{}",
            Template::LlavaV1.render("q1"),
            Template::LlavaV1.end_of_turn(),
            Template::LlavaV1.render_followup("q2")
        );
        assert!(two_turns.ends_with("USER: q1 ASSISTANT: a</s>USER: q2 ASSISTANT:"));
        assert_eq!(
            format!(
                "[INST] q1 [/INST] a</s>{}",
                Template::MistralInstruct.render_followup("q2")
            ),
            "[INST] q1 [/INST] a</s>[INST] q2 [/INST]"
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
