//! Where a checkpoint keeps its chat template, and which one the converted file then runs
//! with: `chat_template.jinja`, else `chat_template.json` (the processor's, as llava-hf's
//! LLaVA-1.6 repositories ship it), else `tokenizer_config.json` (a string, or named
//! templates of which "default" counts). The GGUF carries it as `tokenizer.chat_template`, as
//! llama.cpp's converter writes it, and the pipeline picks its template from that.

use llava_models::template::Template;
use llava_runtime::gguf::{keys, GgufFile};

mod common;
use common::*;

const MISTRAL: &str = "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}</s>{% endif %}{% endfor %}";
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";

/// The llava-hf fixture with `edit` applied to a copy, converted: its template text and the
/// template the pipeline would use.
fn converted(edit: impl FnOnce(&std::path::Path)) -> (Option<String>, Template) {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = copy_fixture("llava-tiny-hf", dir.path());
    edit(&ckpt);
    let out = dir.path().join("llm.gguf");
    llava_convert::convert_llama(&ckpt, &out, llava_convert::Preset::F32).unwrap();
    let f = GgufFile::open(&out).unwrap();
    let text = f
        .get(keys::CHAT_TEMPLATE)
        .map(|_| f.get_str(keys::CHAT_TEMPLATE).unwrap().to_owned());
    let template = Template::from_chat_template(text.as_deref());
    (text, template)
}

fn set_tokenizer_config(ckpt: &std::path::Path, key: &str, value: serde_json::Value) {
    let path = ckpt.join("tokenizer_config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    j[key] = value;
    std::fs::write(path, j.to_string()).unwrap();
}

#[test]
fn the_template_is_read_wherever_transformers_keeps_it() {
    // None anywhere: LLaVA-1.5's.
    assert_eq!(converted(|_| {}), (None, Template::LlavaV1));
    // tokenizer_config.json, a string.
    let (text, t) = converted(|d| set_tokenizer_config(d, "chat_template", MISTRAL.into()));
    assert_eq!(
        (text.as_deref(), t),
        (Some(MISTRAL), Template::MistralInstruct)
    );
    // tokenizer_config.json, named templates: "default" is the chat one.
    let (text, t) = converted(|d| {
        set_tokenizer_config(
            d,
            "chat_template",
            serde_json::json!([
                {"name": "tool_use", "template": MISTRAL},
                {"name": "default", "template": CHATML},
            ]),
        )
    });
    assert_eq!((text.as_deref(), t), (Some(CHATML), Template::Chatml));
    // chat_template.json (the processor's), where tokenizer_config.json has none.
    let (text, t) = converted(|d| {
        let j = serde_json::json!({ "chat_template": MISTRAL });
        std::fs::write(d.join("chat_template.json"), j.to_string()).unwrap();
    });
    assert_eq!(
        (text.as_deref(), t),
        (Some(MISTRAL), Template::MistralInstruct)
    );
    // chat_template.jinja wins over the others.
    let (text, t) = converted(|d| {
        set_tokenizer_config(d, "chat_template", MISTRAL.into());
        let j = serde_json::json!({ "chat_template": MISTRAL });
        std::fs::write(d.join("chat_template.json"), j.to_string()).unwrap();
        std::fs::write(d.join("chat_template.jinja"), CHATML).unwrap();
    });
    assert_eq!((text.as_deref(), t), (Some(CHATML), Template::Chatml));
}
