//! Answers a question about an image with the library API:
//!
//!     cargo run --release --example ask -- LLM.gguf MMPROJ.gguf IMAGE "QUESTION"

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use llava_models::image::{load_image, DEFAULT_MAX_PIXELS};
use llava_models::{GenerateOptions, LoadOptions, Pipeline};
use llava_runtime::backend::CpuBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [llm, mmproj, image, question] = args.as_slice() else {
        return Err("usage: ask LLM.gguf MMPROJ.gguf IMAGE QUESTION".into());
    };
    // Threads: 0 picks one per physical core. Every compatibility check happens here.
    let backend = CpuBackend::new(0);
    let options = LoadOptions::default();
    let pipeline = Pipeline::load(backend, Path::new(llm), Some(Path::new(mmproj)), &options)?;
    let image = load_image(Path::new(image), DEFAULT_MAX_PIXELS)?;

    // A session keeps the conversation: ask again on it to follow up.
    let mut session = pipeline.session()?;
    let stats = session.ask(question, &[image], &GenerateOptions::default(), |text| {
        print!("{text}");
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    println!();
    eprintln!(
        "{} prompt positions, {} tokens at {:.1} tokens/s",
        stats.prefill.positions,
        stats.generation.generated_tokens,
        stats.generation.tokens_per_second()
    );
    Ok(())
}
