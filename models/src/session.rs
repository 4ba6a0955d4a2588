//! A conversation with a pipeline's models ([`Session`]): the KV cache and the token at each
//! position, kept from one prompt to the next, so a follow-up runs only its own new tokens.

use std::ops::ControlFlow;
use std::time::Instant;

use llava_runtime::backend::Backend;
use llava_runtime::sample::Sampler;

use crate::generate::{GenerationStats, PrefillStats, StopFilter, StopReason};
use crate::image::RgbImage;
use crate::llava::{embed_pieces, text_tokens, tokenize_pieces, Piece, PromptError};
use crate::pipeline::{Error, GenerateOptions, Pipeline};
use crate::template::{with_image_markers, Template};

/// A stage of work that can take seconds, reported as it starts
/// ([`Session::on_stage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Image `index` (of `count`) goes through the tower and projector.
    EncodeImage {
        /// Which image, from 0.
        index: usize,
        /// Images in the prompt.
        count: usize,
    },
    /// The LLM runs over the prompt's new positions.
    Prefill {
        /// Positions to run.
        positions: usize,
    },
}

/// What a turn cost: its prompt and its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnStats {
    /// The prompt's prefill.
    pub prefill: PrefillStats,
    /// The answer's generation.
    pub generation: GenerationStats,
}

/// A conversation with a pipeline's models: the KV cache and the tokens at its positions,
/// kept from one prompt to the next, so a follow-up runs only its own new tokens.
pub struct Session<'p, B: Backend> {
    pipeline: &'p Pipeline<B>,
    n_ctx: usize,
    cache: B::KvCache,
    /// Per position: its token, or `None` for an image's row.
    tokens: Vec<Option<u32>>,
    /// The logits of the last position, when nothing has been sampled from them yet.
    logits: Option<Vec<f32>>,
    /// A token sampled but not yet run: the end of the last answer (its end-of-text token, or
    /// the one that completed a stop string), run at the start of the next prompt.
    pending: Option<u32>,
    template: Template,
    system: Option<String>,
    /// Turns asked through [`Session::ask`].
    turns: usize,
    /// Why the last generation ended.
    last_stop: Option<StopReason>,
    /// The last turn was replayed with its end of turn ([`Session::replay_turn`]).
    answer_closed: bool,
    on_stage: Option<Box<dyn FnMut(Stage) + 'p>>,
}

/// Which logits an append keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Last,
    All,
}

impl<'p, B: Backend> Session<'p, B> {
    /// An empty conversation over `cache`, of `n_ctx` positions ([`Pipeline::session`]).
    pub(crate) fn new(pipeline: &'p Pipeline<B>, n_ctx: usize, cache: B::KvCache) -> Self {
        Session {
            pipeline,
            n_ctx,
            cache,
            tokens: Vec::new(),
            logits: None,
            pending: None,
            template: pipeline.template(),
            system: None,
            turns: 0,
            last_stop: None,
            answer_closed: false,
            on_stage: None,
        }
    }

    /// The pipeline this session runs on.
    pub fn pipeline(&self) -> &'p Pipeline<B> {
        self.pipeline
    }

    /// Positions used so far.
    pub fn n_past(&self) -> usize {
        self.tokens.len()
    }

    /// Positions the session holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Positions still free.
    pub fn room(&self) -> usize {
        self.n_ctx - self.tokens.len()
    }

    /// Per position: its token id, or `None` where an image's rows are.
    pub fn tokens(&self) -> &[Option<u32>] {
        &self.tokens
    }

    /// The logits of the last position, until something is sampled from them.
    pub fn last_logits(&self) -> Option<&[f32]> {
        self.logits.as_deref()
    }

    /// The template [`Session::ask`] renders turns with.
    pub fn template(&self) -> Template {
        self.template
    }

    /// Renders turns of [`Session::ask`] with `template` instead of the model's.
    pub fn set_template(&mut self, template: Template) -> Result<(), Error> {
        if self.system.is_some() && !template.has_system() {
            return Err(no_system(template));
        }
        self.template = template;
        Ok(())
    }

    /// Uses `system` as the system prompt of the first turn, for templates that have one.
    pub fn set_system(&mut self, system: &str) -> Result<(), Error> {
        if !self.template.has_system() {
            return Err(no_system(self.template));
        }
        self.system = Some(system.to_owned());
        Ok(())
    }

    /// Calls `f` as each stage that may take seconds starts (image encodes, prefill).
    pub fn on_stage(&mut self, f: impl FnMut(Stage) + 'p) {
        self.on_stage = Some(Box::new(f));
    }

    /// Forgets the conversation: the next prompt starts at position 0 (with BOS). The system
    /// prompt and the template stay (a chat that drops its oldest turns keeps them); see
    /// [`Session::reset`].
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.logits = None;
        self.pending = None;
        self.turns = 0;
        self.last_stop = None;
        self.answer_closed = false;
    }

    /// Forgets the conversation and its system prompt: the session is as new, but for its
    /// template. A server that hands the session to another client starts it so, as nothing of
    /// the last client's may reach the next.
    pub fn reset(&mut self) {
        self.clear();
        self.system = None;
    }

    /// One user turn: `question` (with an `<image>` marker per image, or the markers are put
    /// first) in the session's template — the full first turn with its system prompt, or a
    /// follow-up after the last answer — prefilled, then answered. The answer's text streams
    /// through `emit` (its leading space dropped: it starts a message; an empty string for a
    /// token that made no text final, as in [`Session::generate`]); `emit` returning `Break`
    /// stops generation.
    pub fn ask(
        &mut self,
        question: &str,
        images: &[RgbImage],
        options: &GenerateOptions,
        mut emit: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<TurnStats, Error> {
        let t = self.template;
        let text = self.render_turn(question, images.len());
        let prefill = self.append(&text, images)?;
        self.turns += 1;
        let mut options = options.clone();
        options
            .stop
            .extend(t.stop_strings().iter().map(|s| s.to_string()));
        let mut started = t == Template::Raw;
        let generation = self.generate(&options, |piece| {
            if started {
                return emit(piece);
            }
            let piece = piece.trim_start_matches(' ');
            if piece.is_empty() {
                // Still once per token, so `emit` can stop at every one.
                return emit("");
            }
            started = true;
            emit(piece)
        })?;
        Ok(TurnStats {
            prefill,
            generation,
        })
    }

    /// The text [`Session::ask`] would prefill for `question`: the whole first turn with its
    /// system prompt, or a follow-up after the last answer (closed first with the template's
    /// end of turn when it stopped without its end-of-text token).
    pub fn render_turn(&self, question: &str, n_images: usize) -> String {
        let t = self.template;
        let user = with_image_markers(question, n_images);
        if self.turns == 0 || self.tokens.is_empty() {
            t.render_with_system(&user, self.system.as_deref())
        } else if self.answer_closed || self.last_stop == Some(StopReason::EndOfText) {
            // Closed by a replayed turn, or the answer's end-of-text token is pending: it runs
            // first.
            t.render_followup(&user)
        } else {
            // The last answer ended without its end-of-text token (max tokens, a stop string,
            // or it was cancelled): close it as the conversation format does.
            format!("{}{}", t.end_of_turn(), t.render_followup(&user))
        }
    }

    /// Positions [`Session::ask`] would prefill for `question` and `images`, without running
    /// anything (a chat front end decides with it whether older turns must go).
    pub fn turn_positions(&self, question: &str, images: &[RgbImage]) -> Result<usize, Error> {
        let p = self.pipeline;
        let text = self.render_turn(question, images.len());
        let bos = self.tokens.is_empty() && self.pending.is_none();
        let pieces = tokenize_pieces(p.tokenizer(), &text, images.len(), bos)?;
        let text_positions = text_tokens(&pieces);
        let image_positions = images
            .iter()
            .map(|img| p.image_positions(img))
            .sum::<Result<usize, Error>>()?;
        Ok(usize::from(self.pending.is_some()) + text_positions + image_positions)
    }

    /// Runs a past turn — `question`, its `images` and the `answer` it got — as [`Session::ask`]
    /// would have left it, answer closed by the template's end of turn, without generating: a
    /// chat front end rebuilds a shortened conversation with it.
    pub fn replay_turn(
        &mut self,
        question: &str,
        images: &[RgbImage],
        answer: &str,
    ) -> Result<PrefillStats, Error> {
        let t = self.template;
        let text = format!(
            "{}{}{answer}{}",
            self.render_turn(question, images.len()),
            // The space the answer's first token carries after "ASSISTANT:" or "[/INST]"
            // (ChatML answers start on a new line).
            if matches!(t, Template::Raw | Template::Chatml) || answer.is_empty() {
                ""
            } else {
                " "
            },
            t.end_of_turn()
        );
        let stats = self.append(&text, images)?;
        self.turns += 1;
        self.answer_closed = true;
        Ok(stats)
    }

    /// Appends `text` (with an `<image>` marker per image; without images `<image>` is plain
    /// text) and its images at the end of the conversation and runs them, keeping the last
    /// position's logits for [`Session::generate`]. BOS starts the session's first prompt
    /// (when the tokenizer adds one). Everything is checked before any image is encoded: the
    /// markers, the images' sizes, and that the whole prompt fits in the room left.
    pub fn append(&mut self, text: &str, images: &[RgbImage]) -> Result<PrefillStats, Error> {
        Ok(self.append_inner(text, images, Keep::Last)?.0)
    }

    /// Appends `ids` as they are (no BOS added) and runs them, as [`Session::append`].
    pub fn append_tokens(&mut self, ids: &[u32]) -> Result<PrefillStats, Error> {
        Ok(self
            .run_pieces(&[Piece::Text(ids.to_vec())], &[], Keep::Last)?
            .0)
    }

    /// [`Session::append`], returning the logits of every new position, `[positions, n_vocab]`
    /// row-major (image positions included), for scoring and parity checks.
    pub fn evaluate(
        &mut self,
        text: &str,
        images: &[RgbImage],
    ) -> Result<(PrefillStats, Vec<f32>), Error> {
        self.append_inner(text, images, Keep::All)
    }

    /// [`Session::append_tokens`], returning the logits of every new position.
    pub fn evaluate_tokens(&mut self, ids: &[u32]) -> Result<(PrefillStats, Vec<f32>), Error> {
        self.run_pieces(&[Piece::Text(ids.to_vec())], &[], Keep::All)
    }

    fn append_inner(
        &mut self,
        text: &str,
        images: &[RgbImage],
        keep: Keep,
    ) -> Result<(PrefillStats, Vec<f32>), Error> {
        let p = self.pipeline;
        let bos = self.tokens.is_empty() && self.pending.is_none();
        let pieces = tokenize_pieces(p.tokenizer(), text, images.len(), bos)?;
        self.run_pieces(&pieces, images, keep)
    }

    fn run_pieces(
        &mut self,
        pieces: &[Piece],
        images: &[RgbImage],
        keep: Keep,
    ) -> Result<(PrefillStats, Vec<f32>), Error> {
        let p = self.pipeline;
        let mut pieces = pieces.to_vec();
        if let Some(token) = self.pending {
            match pieces.first_mut() {
                Some(Piece::Text(ids)) => ids.insert(0, token),
                _ => pieces.insert(0, Piece::Text(vec![token])),
            }
        }
        let n_vocab = p.llm().config.n_vocab;
        for piece in &pieces {
            if let Piece::Text(ids) = piece {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= n_vocab) {
                    return Err(Error::Usage(format!(
                        "token id {id} is outside the model's {n_vocab} embeddings"
                    )));
                }
            }
        }
        let tokens_of_image: Vec<usize> = images
            .iter()
            .map(|img| {
                p.check_image(img)?;
                p.image_positions(img)
            })
            .collect::<Result<_, Error>>()?;
        let image_positions: usize = tokens_of_image.iter().sum();
        let text_positions = text_tokens(&pieces);
        let positions = text_positions + image_positions;
        if positions == 0 {
            return Err(PromptError::Empty.into());
        }
        if positions > self.room() {
            return Err(PromptError::TooLong {
                positions,
                image_positions,
                room: self.room(),
                n_ctx: self.n_ctx,
            }
            .into());
        }

        let b = p.backend();
        let t0 = Instant::now();
        let mut encoded = Vec::with_capacity(images.len());
        for (index, image) in images.iter().enumerate() {
            self.stage(Stage::EncodeImage {
                index,
                count: images.len(),
            });
            encoded.push(p.encode_image(image)?);
        }
        let encode_time = t0.elapsed();

        self.stage(Stage::Prefill { positions });
        let t1 = Instant::now();
        let prompt = embed_pieces(b, p.llm(), &pieces, &encoded);
        drop(encoded);
        let start = self.tokens.len();
        let logits = p.llm().forward(
            b,
            prompt.embeddings,
            start,
            &mut self.cache,
            keep == Keep::Last,
        );
        // Whatever happens next, the cache now holds these positions (or, on a device
        // failure, an unknown state: the session is then cleared).
        let values = match b.download(&logits) {
            Ok(v) => v,
            Err(e) => {
                self.clear();
                return Err(e.into());
            }
        };
        let prefill_time = t1.elapsed();
        self.pending = None;
        for piece in &pieces {
            match piece {
                Piece::Text(ids) => self.tokens.extend(ids.iter().map(|&id| Some(id))),
                Piece::Image(i) => self
                    .tokens
                    .extend(std::iter::repeat_n(None, tokens_of_image[*i])),
            }
        }
        self.logits = Some(values[values.len() - n_vocab..].to_vec());
        let stats = PrefillStats {
            positions,
            images: images.len(),
            image_positions,
            encode_time,
            prefill_time,
        };
        Ok((stats, values))
    }

    /// Generates from the last position's logits (after [`Session::append`]) up to
    /// `options.max_tokens` tokens, streaming text through `emit` as it becomes final (an
    /// empty string for a token that made no text final yet: `emit` is called once per token
    /// at least); `emit` returning `Break` stops generation (nothing more is computed or
    /// emitted). Each
    /// generated token joins the conversation; the last one sampled (an end-of-text token,
    /// say) runs at the start of the next prompt.
    pub fn generate(
        &mut self,
        options: &GenerateOptions,
        mut emit: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationStats, Error> {
        let p = self.pipeline;
        options.sampler.check().map_err(Error::Usage)?;
        let Some(mut logits) = self.logits.take() else {
            return Err(Error::Usage(
                "nothing to answer: append a prompt before generating".into(),
            ));
        };
        let mut sampler = Sampler::new(options.sampler.clone());
        let window = options.sampler.penalty_last_n.min(self.tokens.len());
        for &t in self.tokens[self.tokens.len() - window..].iter().flatten() {
            sampler.accept(t);
        }
        let cancelled = std::cell::Cell::new(false);
        let emitted = std::cell::Cell::new(false);
        let mut emit = |text: &str| {
            emitted.set(true);
            if !cancelled.get() && emit(text).is_break() {
                cancelled.set(true);
            }
        };
        let t0 = Instant::now();
        // Decoding continues a sequence: a piece keeps its leading space (" brown" after
        // "A small"); only a sequence's very first token drops the SentencePiece space.
        let mut decoder = p.tokenizer().stream_decoder().strip_leading_space(false);
        let mut text = StopFilter::new(&options.stop);
        let mut generated = 0;
        let stop_reason = loop {
            if generated == options.max_tokens {
                self.logits = Some(logits);
                break StopReason::MaxTokens;
            }
            let token = sampler.sample(&logits);
            sampler.accept(token);
            generated += 1;
            if p.tokenizer().is_eog(token) && !options.ignore_eos {
                self.pending = Some(token);
                break StopReason::EndOfText;
            }
            // An id the model produced is in its vocabulary; decode errors cannot happen here.
            let piece = decoder.push(token).unwrap_or("");
            emitted.set(false);
            let stopped = text.push(piece, &mut emit);
            if !emitted.get() {
                // Nothing final yet (a partial character, a held-back stop string, a control
                // token): the callback still hears of the token, so it can stop at every one.
                emit("");
            }
            if stopped || cancelled.get() {
                self.pending = Some(token);
                break if stopped {
                    StopReason::StopString
                } else {
                    StopReason::Cancelled
                };
            }
            if self.room() == 0 {
                self.pending = Some(token);
                break StopReason::ContextFull;
            }
            let x = p.llm().embed(p.backend(), &[token]);
            let start = self.tokens.len();
            let out = p
                .llm()
                .forward(p.backend(), x, start, &mut self.cache, true);
            logits = match p.backend().download(&out) {
                Ok(v) => v,
                Err(e) => {
                    self.clear();
                    return Err(e.into());
                }
            };
            self.tokens.push(Some(token));
        };
        if !matches!(stop_reason, StopReason::StopString | StopReason::Cancelled) {
            let rest = decoder.finish().to_owned();
            if !text.push(&rest, &mut emit) {
                text.flush(&mut emit);
            }
        }
        self.last_stop = Some(stop_reason);
        self.answer_closed = false;
        Ok(GenerationStats {
            generated_tokens: generated,
            generation_time: t0.elapsed(),
            stop_reason,
        })
    }

    fn stage(&mut self, stage: Stage) {
        if let Some(f) = &mut self.on_stage {
            f(stage);
        }
    }
}

fn no_system(template: Template) -> Error {
    Error::Usage(format!(
        "the {template} template has no system prompt (llava_v1, vicuna_v1 and chatml have one)"
    ))
}
