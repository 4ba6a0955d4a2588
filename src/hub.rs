//! The Hugging Face Hub: `llava pull REPO[:QUANT]`, and `--hf REPO[:QUANT]` on the commands that
//! run a model (llama.cpp's `-hf`).
//!
//! - A GGUF repository gives its LLM file of the asked quantization (default Q4_K_M, else the
//!   closest one there) and its mmproj (a `.gguf` whose name says "mmproj").
//! - A transformers repository (config.json with safetensors or PyTorch `.bin` weights) is
//!   downloaded, then converted once with the asked preset; the GGUF files are kept beside the
//!   Hub cache, in `$HF_HOME/llava-edge/`.
//!
//! Downloads go to the Hub's standard cache (`$HF_HOME/hub`, default
//! `~/.cache/huggingface/hub`; `HF_HUB_CACHE` overrides), shared with Python's
//! huggingface_hub. The client is the `hf-hub` crate: its `.part` files resume an interrupted
//! download, in the same run (a few retries) or the next one. Each LFS file's sha256, which the
//! Hub lists, is checked after the download; a file that does not match is deleted.
//! `HF_ENDPOINT`, `HF_TOKEN` (else the token file of `huggingface-cli login`) and
//! `HF_HUB_OFFLINE` are honoured. With `--offline`, or when the cache already holds the asked
//! quantization, nothing touches the network.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llava_convert::{check_mmproj, Preset};
use sha2::{Digest, Sha256};

/// `llava pull`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  llava pull cjpais/llava-1.6-mistral-7b-gguf            (Q4_K_M and its mmproj)
  llava pull mys/ggml_llava-v1.5-7b:Q5_K
  llava pull llava-hf/llava-1.5-7b-hf:q4_k_m             (downloads, then converts once)
  llava run --hf cjpais/llava-1.6-mistral-7b-gguf --image photo.jpg -p 'What is this?'")]
pub struct Args {
    /// A Hub repository and optionally a quantization: OWNER/NAME[:QUANT].
    spec: Spec,
    #[command(flatten)]
    hub: HubArgs,
}

/// The flags of a Hub download, shared by `pull` and the commands with `--hf`.
#[derive(clap::Args, Clone, Debug)]
pub struct HubArgs {
    /// The repository's branch, tag or commit (with --hf or pull).
    #[arg(long, default_value = "main", value_parser = revision)]
    pub revision: String,
    /// Use only the local Hub cache; never touch the network (HF_HUB_OFFLINE=1 does too).
    #[arg(long)]
    pub offline: bool,
    /// The preset a transformers repository is converted with, for its vision tower and
    /// projector (the LLM's is the QUANT of the spec, default q4_k_m).
    #[arg(long, default_value = "f16")]
    pub vision_quant: Preset,
}

/// A branch, tag or commit: it names a file under the cache's `refs/` (branches may hold
/// `/`), so nothing that could leave that directory.
fn revision(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('/')
        && !s.contains('\\')
        && !s.chars().any(char::is_control)
        && s.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: not a branch, tag or commit name"))
    }
}

pub fn run(args: &Args) -> Result<()> {
    let pulled = pull(&args.spec, &args.hub)?;
    // The paths on stdout, for scripts: `llava run -m "$(llava pull R | head -1)"`.
    let mut out = format!("{}\n", pulled.model.display());
    if let Some(m) = &pulled.mmproj {
        out.push_str(&format!("{}\n", m.display()));
    }
    crate::write_stdout(&out)
}

/// A repository and a quantization: `owner/name[:QUANT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub repo: String,
    pub quant: Option<String>,
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Spec, String> {
        let (repo, quant) = match s.split_once(':') {
            Some((r, q)) => (r, Some(q)),
            None => (s, None),
        };
        let name_ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && !p.starts_with('-')
                && p.len() <= 96
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        match repo.split_once('/') {
            Some((owner, name)) if name_ok(owner) && name_ok(name) => {}
            _ => {
                return Err(format!(
                    "{s:?}: expected a Hub repository OWNER/NAME, optionally with :QUANT \
                     (e.g. cjpais/llava-1.6-mistral-7b-gguf:Q4_K_M)"
                ))
            }
        }
        if let Some(q) = quant {
            if q.is_empty() || !q.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "{s:?}: the quantization after ':' should look like Q4_K_M"
                ));
            }
        }
        Ok(Spec {
            repo: repo.to_owned(),
            quant: quant.map(str::to_ascii_uppercase),
        })
    }
}

/// What a pull gives: the LLM, and the mmproj when the repository has one.
#[derive(Debug)]
pub struct Pulled {
    pub model: PathBuf,
    pub mmproj: Option<PathBuf>,
}

/// One file of a repository, as the Hub lists it (or as the cache holds it).
#[derive(Clone, Debug)]
struct RepoFile {
    name: String,
    size: Option<u64>,
    /// The LFS object's sha256 (large files only).
    sha256: Option<String>,
}

/// A repository at one commit.
struct Listing {
    commit: String,
    files: Vec<RepoFile>,
}

/// The files to fetch, and what they are.
#[derive(Debug)]
enum Choice {
    Gguf {
        llm: RepoFile,
        mmproj: Option<RepoFile>,
    },
    Transformers {
        files: Vec<RepoFile>,
        preset: Preset,
    },
}

impl Choice {
    fn files(&self) -> Vec<&RepoFile> {
        match self {
            Choice::Gguf { llm, mmproj } => std::iter::once(llm).chain(mmproj).collect(),
            Choice::Transformers { files, .. } => files.iter().collect(),
        }
    }
}

/// llama.cpp's quantization tags as they appear in file names, largest first: the "closest"
/// quantization is the nearest in this order (a tie goes to the larger).
const QUANTS: &[&str] = &[
    "F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M",
    "Q4_K", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K", "Q3_K_S",
    "Q3_K_XS", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS",
    "IQ2_XXS", "IQ1_M", "IQ1_S",
];

const DEFAULT_QUANT: &str = "Q4_K_M";

/// Times a cut download is resumed within one run before the error (the next run resumes too).
const RETRIES: usize = 3;

/// The largest repository listing read: a 7B repository's is a few kB.
const MAX_LISTING_BYTES: u64 = 16 << 20;

/// Whether two tags name one quantization: llama.cpp's quantize takes Q3_K, Q4_K and Q5_K for
/// the _M mixes, and older repositories name their files so (`ggml-model-q4_k.gguf`).
fn same_quant(a: &str, b: &str) -> bool {
    let canonical = |q: &str| match q {
        "Q3_K" | "Q4_K" | "Q5_K" => format!("{q}_M"),
        q => q.to_owned(),
    };
    canonical(a) == canonical(b)
}

/// The files a transformers checkpoint needs besides its weights.
const CHECKPOINT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
];

/// The quantization tag in a file name (`llava-v1.5-7b-Q4_K_M.gguf`, `ggml-model-q4_k.gguf`).
fn quant_of(file: &str) -> Option<usize> {
    let stem = file
        .strip_suffix(".gguf")
        .unwrap_or(file)
        .to_ascii_uppercase();
    stem.split(['-', '.'])
        .filter_map(|t| QUANTS.iter().position(|q| *q == t))
        .next_back()
}

/// A shard of a split GGUF (`…-00001-of-00003.gguf`).
fn is_split(file: &str) -> bool {
    let stem = file.strip_suffix(".gguf").unwrap_or(file);
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    parts.len() == 4
        && parts[1] == "of"
        && [parts[0], parts[2]]
            .iter()
            .all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// PyTorch weights, as the converter takes them (`pytorch_model*.bin`; not
/// `training_args.bin` and the like).
fn is_torch_weights(file: &str) -> bool {
    file.starts_with("pytorch_model") && file.ends_with(".bin")
}

fn is_mmproj(file: &str) -> bool {
    file.to_ascii_lowercase().contains("mmproj")
}

/// Picks the files of `spec` from a repository's listing.
fn choose(spec: &Spec, files: &[RepoFile]) -> Result<Choice> {
    let ggufs: Vec<&RepoFile> = files.iter().filter(|f| f.name.ends_with(".gguf")).collect();
    if !ggufs.is_empty() {
        return choose_gguf(spec, &ggufs);
    }
    let has = |name: &str| files.iter().any(|f| f.name == name);
    let safetensors = files.iter().any(|f| f.name.ends_with(".safetensors"));
    let bins = files.iter().any(|f| is_torch_weights(&f.name));
    if !has("config.json") || !(safetensors || bins) {
        bail!(
            "{}: neither GGUF files nor a transformers checkpoint (config.json with \
             *.safetensors or pytorch_model*.bin)",
            spec.repo
        );
    }
    let quant = spec
        .quant
        .as_deref()
        .unwrap_or("q4_k_m")
        .to_ascii_lowercase();
    let preset: Preset = quant.parse().map_err(|e| {
        anyhow!(
            "{}:{}: {e} (a transformers repository is converted with one of llava's presets)",
            spec.repo,
            spec.quant.as_deref().unwrap_or_default()
        )
    })?;
    let wanted = |f: &&RepoFile| {
        CHECKPOINT_FILES.contains(&f.name.as_str())
            || (safetensors && f.name.ends_with(".safetensors"))
            || (!safetensors && is_torch_weights(&f.name))
    };
    Ok(Choice::Transformers {
        files: files.iter().filter(wanted).cloned().collect(),
        preset,
    })
}

fn choose_gguf(spec: &Spec, ggufs: &[&RepoFile]) -> Result<Choice> {
    let asked = spec.quant.as_deref().unwrap_or(DEFAULT_QUANT);
    let asked_rank = QUANTS.iter().position(|q| *q == asked).ok_or_else(|| {
        anyhow!(
            "{}: unknown quantization {asked:?}; known: {}",
            spec.repo,
            QUANTS.join(", ")
        )
    })?;
    let llms: Vec<&RepoFile> = ggufs
        .iter()
        .copied()
        .filter(|f| !is_mmproj(&f.name))
        .collect();
    let names = |v: &[&RepoFile]| {
        v.iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The asked one (or its alias), else the nearest in QUANTS; a tie goes to the larger file
    // (lower rank), then the name.
    let distance = |r: usize| {
        if same_quant(QUANTS[r], asked) {
            0
        } else {
            r.abs_diff(asked_rank)
        }
    };
    let llm = llms
        .iter()
        .filter_map(|f| quant_of(&f.name).map(|r| (distance(r), r, *f)))
        .min_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)))
        .map(|(_, _, f)| f);
    let llm = match (llm, llms.as_slice()) {
        (Some(f), _) => f,
        (None, [only]) => only,
        (None, []) => bail!("{}: no LLM GGUF file, only {}", spec.repo, names(ggufs)),
        (None, many) => bail!(
            "{}: cannot tell which GGUF file to take: no name among {} carries a \
             quantization tag",
            spec.repo,
            names(many)
        ),
    };
    if is_split(&llm.name) {
        bail!(
            "{}: {} is one part of a split GGUF, which llava does not load; merge the parts \
             with llama.cpp's `llama-gguf-split --merge`, or pick another quantization",
            spec.repo,
            llm.name
        );
    }
    // The mmproj: F16 when there is one, else the largest quantization.
    let mmproj = ggufs
        .iter()
        .copied()
        .filter(|f| is_mmproj(&f.name))
        .min_by_key(|f| {
            let rank = quant_of(&f.name).unwrap_or(QUANTS.len());
            (QUANTS.get(rank) != Some(&"F16"), rank, f.name.clone())
        });
    Ok(Choice::Gguf {
        llm: llm.clone(),
        mmproj: mmproj.cloned(),
    })
}

/// A byte count for people: "4.08 GB", "512 kB".
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.0} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// Where the Hub's files live and how to reach it.
struct Hub {
    cache: Cache,
    /// `$HF_HOME`: the converted GGUF files go to its `llava-edge/`.
    home: PathBuf,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Hub {
    fn from_env(offline: bool) -> Result<Hub> {
        let home = match env_nonempty("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => {
                let user = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| anyhow!("neither HF_HOME nor HOME is set: no Hub cache"))?;
                PathBuf::from(user).join(".cache").join("huggingface")
            }
        };
        let cache = Cache::new(
            env_nonempty("HF_HUB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("hub")),
        );
        let token = env_nonempty("HF_TOKEN")
            .map(|t| t.trim().to_owned())
            .or_else(|| Cache::new(home.join("hub")).token());
        let endpoint = env_nonempty("HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".to_owned())
            .trim_end_matches('/')
            .to_owned();
        let env_offline = env_nonempty("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        Ok(Hub {
            cache,
            home,
            endpoint,
            token,
            offline: offline || env_offline,
        })
    }

    fn repo_dir(&self, repo: &Repo) -> PathBuf {
        self.cache.path().join(repo.folder_name())
    }

    /// The repository as the cache holds it at `revision`, if it does.
    fn cached(&self, repo: &Repo) -> Option<Listing> {
        let dir = self.repo_dir(repo);
        let revision = repo.revision();
        let commit = if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            revision.to_owned()
        } else {
            std::fs::read_to_string(dir.join("refs").join(revision))
                .ok()?
                .trim()
                .to_owned()
        };
        if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
            return None;
        }
        let snapshot = dir.join("snapshots").join(&commit);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&snapshot).ok()?.flatten() {
            // Follows the link to the blob: a dangling link is not a cached file.
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            let name = entry
                .file_name()
                .to_str()
                .filter(|n| plain_name(n))
                .map(str::to_owned);
            if let (true, Some(name)) = (meta.is_file(), name) {
                files.push(RepoFile {
                    name,
                    size: Some(meta.len()),
                    sha256: None,
                });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Listing { commit, files })
    }

    fn snapshot(&self, repo: &Repo, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    fn api(&self, repo: &Repo) -> Result<ApiRepo> {
        let api = ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(RETRIES)
            .with_user_agent("llava-edge", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| self.error(repo, "", e))?;
        Ok(api.repo(repo.clone()))
    }

    /// The repository's files at `revision`, from the Hub.
    fn list(&self, repo: &Repo, api: &ApiRepo) -> Result<Listing> {
        let response = api
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| self.error(repo, "", ApiError::RequestError(Box::new(e))))?;
        let body: serde_json::Value = serde_json::from_reader(
            response.into_reader().take(MAX_LISTING_BYTES),
        )
        .map_err(|e| {
            anyhow!(
                "{}: the Hub's listing is not JSON (or over 16 MiB): {e}",
                repo_name(repo)
            )
        })?;
        let commit = body["sha"]
            .as_str()
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow!("{}: the Hub's answer has no commit", repo_name(repo)))?
            .to_owned();
        let mut files = Vec::new();
        for s in body["siblings"].as_array().into_iter().flatten() {
            let Some(name) = s["rfilename"].as_str() else {
                continue;
            };
            if !plain_name(name) {
                continue;
            }
            let sha256 = s["lfs"]["sha256"]
                .as_str()
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase);
            files.push(RepoFile {
                name: name.to_owned(),
                size: s["size"].as_u64().or_else(|| s["lfs"]["size"].as_u64()),
                sha256,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Listing { commit, files })
    }

    /// One line for a failed request about `repo` (`file` when a download failed).
    fn error(&self, repo: &Repo, file: &str, e: ApiError) -> anyhow::Error {
        let what = if file.is_empty() {
            repo_name(repo)
        } else {
            format!("{}: {file}", repo_name(repo))
        };
        match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::Status(401 | 403, _) if self.token.is_none() => anyhow!(
                    "{what}: the Hub refused access (gated or private repository): accept its \
                     terms on the Hub, then set HF_TOKEN or run `huggingface-cli login`"
                ),
                ureq::Error::Status(401 | 403, _) => anyhow!(
                    "{what}: the Hub refused access with this token (gated or private \
                     repository; has the token's account accepted its terms?)"
                ),
                ureq::Error::Status(404, _) => anyhow!(
                    "{what}: not found on {} (check the name and --revision {})",
                    self.endpoint,
                    repo.revision()
                ),
                ureq::Error::Status(code, r) => {
                    anyhow!("{what}: the Hub answered HTTP {code} {}", r.status_text())
                }
                ureq::Error::Transport(t) => anyhow!(
                    "{what}: cannot reach {}: {t}; with --offline, llava uses only the cache",
                    self.endpoint
                ),
            },
            ApiError::TooManyRetries(e) => {
                let inner = self.error(repo, file, *e);
                anyhow!("{inner:#} (after {RETRIES} retries; run the command again to resume)")
            }
            ApiError::IoError(e) if e.kind() == std::io::ErrorKind::StorageFull => anyhow!(
                "{what}: the disk is full ({}); free space and run the command again to resume",
                self.cache.path().display()
            ),
            e => anyhow!("{what}: {e}"),
        }
    }
}

/// Whether llava takes a file of a repository: top-level with a plain name, so nothing is
/// written outside the snapshot, and no control characters, as the names are shown on the
/// terminal (an escape sequence in a name would reach it) and become file names in the cache.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\'])
        && !name.starts_with('.')
        && !name.chars().any(char::is_control)
}

fn repo_name(repo: &Repo) -> String {
    match repo.revision() {
        "main" => repo.url(),
        r => format!("{}@{r}", repo.url()),
    }
}

/// The files of `spec`, downloaded (and converted) as needed.
pub fn pull(spec: &Spec, args: &HubArgs) -> Result<Pulled> {
    let hub = Hub::from_env(args.offline)?;
    let repo = Repo::with_revision(spec.repo.clone(), RepoType::Model, args.revision.clone());
    let (commit, choice, from_cache) = fetch(&hub, &repo, spec)?;
    finish(&hub, &repo, spec, &commit, choice, args, from_cache)
}

/// Chooses the files of `spec` in `repo` and puts them in the cache, if they are not there:
/// the commit, the choice, and whether the cache alone answered.
fn fetch(hub: &Hub, repo: &Repo, spec: &Spec) -> Result<(String, Choice, bool)> {
    // The cache alone when it holds exactly what was asked; offline, without a quantization
    // asked, whatever it holds.
    if let Some(cached) = hub.cached(repo) {
        if let Ok(choice) = choose(spec, &cached.files) {
            if complete(hub, repo, spec, &cached.commit, &choice)
                || (hub.offline && spec.quant.is_none())
            {
                return Ok((cached.commit, choice, true));
            }
        }
    }
    if hub.offline {
        let what = match &spec.quant {
            Some(q) => format!("{q} of {}", repo_name(repo)),
            None => repo_name(repo),
        };
        bail!(
            "{what}: not in the Hub cache ({}) and --offline (or HF_HUB_OFFLINE) forbids the \
             network; run `llava pull {}` once with a network",
            hub.cache.path().display(),
            spec.repo
        );
    }
    let api = hub.api(repo)?;
    let listing = hub.list(repo, &api)?;
    let choice = choose(spec, &listing.files)?;
    if let Choice::Gguf { llm, .. } = &choice {
        if let Some(q) = quant_of(&llm.name).filter(|_| !exact(spec, &choice)) {
            diag!(
                "llava: {} has no {} file; taking the closest, {}",
                spec.repo,
                spec.quant.as_deref().unwrap_or(DEFAULT_QUANT),
                QUANTS[q]
            );
        }
    }
    let files = choice.files();
    let total: u64 = files.iter().filter_map(|f| f.size).sum();
    let snapshot = hub.snapshot(repo, &listing.commit);
    diag!(
        "llava: {} at {}: {} file(s), {}",
        repo_name(repo),
        &listing.commit[..listing.commit.len().min(12)],
        files.len(),
        human(total)
    );
    for f in &files {
        let size = f.size.map(human).unwrap_or_else(|| "size unknown".into());
        let cached = snapshot.join(&f.name).is_file();
        diag!(
            "  {} ({size}){}",
            f.name,
            if cached { ", cached" } else { "" }
        );
    }
    for f in files {
        if snapshot.join(&f.name).is_file() {
            continue;
        }
        let bar = Bar::new(&f.name, f.size);
        let path = api
            .download_with_progress(&f.name, bar)
            .map_err(|e| hub.error(repo, &f.name, e))?;
        verify(repo, f, &path)?;
    }
    Ok((listing.commit, choice, false))
}

/// Whether `choice` is exactly what `spec` asks for (a GGUF file of the asked quantization,
/// not a nearby one).
fn exact(spec: &Spec, choice: &Choice) -> bool {
    match choice {
        Choice::Gguf { llm, .. } => {
            let asked = spec.quant.as_deref().unwrap_or(DEFAULT_QUANT);
            quant_of(&llm.name).is_some_and(|r| same_quant(QUANTS[r], asked))
        }
        Choice::Transformers { .. } => true,
    }
}

/// Whether what the cache holds at `commit` answers `spec` without the network. A cached
/// GGUF file is complete (the cache links a file only once it is whole). A checkpoint's
/// files are not known to be all there, as a run cut between two of them leaves some, so it
/// counts only once its conversion with the asked preset exists.
fn complete(hub: &Hub, repo: &Repo, spec: &Spec, commit: &str, choice: &Choice) -> bool {
    match choice {
        Choice::Gguf { .. } => exact(spec, choice),
        Choice::Transformers { preset, .. } => {
            converted_llm(hub, repo, spec, commit, *preset).is_file()
        }
    }
}

/// Where a transformers repository's conversion goes: `$HF_HOME/llava-edge/<repo>/<commit>/`.
fn converted_dir(hub: &Hub, repo: &Repo, commit: &str) -> PathBuf {
    hub.home
        .join("llava-edge")
        .join(repo.folder_name())
        .join(commit)
}

/// The repository's name, as its converted files are named.
fn converted_name(spec: &Spec) -> &str {
    spec.repo.rsplit('/').next().unwrap_or("model")
}

/// The LLM file of a transformers repository converted with `preset`.
fn converted_llm(hub: &Hub, repo: &Repo, spec: &Spec, commit: &str, preset: Preset) -> PathBuf {
    converted_dir(hub, repo, commit).join(format!("{}-{preset}.gguf", converted_name(spec)))
}

/// The local paths of a chosen set of files, converting a transformers checkpoint once.
fn finish(
    hub: &Hub,
    repo: &Repo,
    spec: &Spec,
    commit: &str,
    choice: Choice,
    args: &HubArgs,
    from_cache: bool,
) -> Result<Pulled> {
    let snapshot = hub.snapshot(repo, commit);
    match choice {
        Choice::Gguf { llm, mmproj } => {
            if from_cache {
                diag!("llava: {} (cached): {}", repo_name(repo), llm.name);
            }
            if mmproj.is_none() {
                diag!(
                    "llava: {} has no mmproj file: text only, no images",
                    spec.repo
                );
            }
            Ok(Pulled {
                model: snapshot.join(&llm.name),
                mmproj: mmproj.map(|m| snapshot.join(&m.name)),
            })
        }
        Choice::Transformers { preset, .. } => {
            let name = converted_name(spec);
            let out = converted_dir(hub, repo, commit);
            let llm = converted_llm(hub, repo, spec, commit, preset);
            let kind = llava_convert::source::Source::open(&snapshot)
                .with_context(|| format!("{}: the downloaded checkpoint", spec.repo))?
                .kind;
            let mmproj = kind
                .is_llava()
                .then(|| out.join(format!("mmproj-{name}-{}.gguf", args.vision_quant)));
            if llm.is_file() && mmproj.as_ref().is_none_or(|m| m.is_file()) {
                if from_cache {
                    diag!(
                        "llava: {} (cached, converted): {}",
                        spec.repo,
                        llm.display()
                    );
                }
            } else {
                // An original LLaVA-1.5 checkpoint names its CLIP tower instead of holding it.
                let tower = match mmproj {
                    Some(_) if check_mmproj(&snapshot, None, args.vision_quant).is_err() => {
                        Some(pull_tower(hub, spec, &snapshot)?)
                    }
                    _ => None,
                };
                diag!(
                    "llava: converting {} to {preset} in {}",
                    spec.repo,
                    out.display()
                );
                crate::convert::convert_checkpoint(&crate::convert::Job {
                    dir: &snapshot,
                    vision_tower: tower.as_deref(),
                    quant: preset,
                    vision_quant: args.vision_quant,
                    llm_out: &llm,
                    mmproj_out: mmproj.as_deref(),
                    force: true,
                    verbose: false,
                })?;
            }
            Ok(Pulled { model: llm, mmproj })
        }
    }
}

/// The CLIP tower an original LLaVA checkpoint names in its config (`mm_vision_tower`,
/// e.g. openai/clip-vit-large-patch14-336), fetched like a checkpoint: its directory.
fn pull_tower(hub: &Hub, spec: &Spec, snapshot: &Path) -> Result<PathBuf> {
    let config = snapshot.join("config.json");
    let text = std::fs::read_to_string(&config).with_context(|| format!("{}", config.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", config.display()))?;
    let Some(name) = json["mm_vision_tower"].as_str() else {
        bail!(
            "{}: the checkpoint holds no vision tower and its config names none \
             (mm_vision_tower); convert it with `llava convert --vision-tower DIR`",
            spec.repo
        );
    };
    let tower: Spec = name
        .parse()
        .map_err(|e| anyhow!("{}: mm_vision_tower {e}", spec.repo))?;
    diag!(
        "llava: {} names its vision tower, {}",
        spec.repo,
        tower.repo
    );
    let repo = Repo::with_revision(tower.repo.clone(), RepoType::Model, "main".into());
    match fetch(hub, &repo, &tower)? {
        (commit, Choice::Transformers { .. }, _) => Ok(hub.snapshot(&repo, &commit)),
        _ => bail!(
            "{}: the vision tower {} is not a transformers checkpoint",
            spec.repo,
            tower.repo
        ),
    }
}

/// Checks a download against the Hub's listing: its size, and the LFS sha256 where there is
/// one. A file that does not match is removed from the cache (blob and link).
fn verify(repo: &Repo, f: &RepoFile, path: &Path) -> Result<()> {
    let remove = || {
        if let Ok(blob) = std::fs::canonicalize(path) {
            let _ = std::fs::remove_file(blob);
        }
        let _ = std::fs::remove_file(path);
    };
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    if let Some(size) = f.size.filter(|&s| s != len) {
        remove();
        bail!(
            "{}: {}: downloaded {len} bytes, the Hub lists {size}; the file was removed, run \
             the command again",
            repo_name(repo),
            f.name
        );
    }
    let Some(want) = &f.sha256 else {
        return Ok(());
    };
    let got = sha256_of(path)?;
    if &got != want {
        remove();
        bail!(
            "{}: {}: sha256 {got} does not match the Hub's {want}; the file was removed, run \
             the command again",
            repo_name(repo),
            f.name
        );
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("{}", path.display()))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A download's progress: a bar on a terminal, a line at the start otherwise.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(name: &str, size: Option<u64>) -> Bar {
        let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
        if std::io::stderr().is_terminal() {
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(name.to_owned());
        } else {
            diag!("llava: downloading {name}");
        }
        Bar { bar }
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, _filename: &str) {
        // Called again when a retry resumes; the resumed bytes come as an update.
        self.bar.set_length(size as u64);
        self.bar.set_position(0);
    }

    fn update(&mut self, size: usize) {
        self.bar.inc(size as u64);
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> RepoFile {
        RepoFile {
            name: name.into(),
            size: None,
            sha256: None,
        }
    }

    fn pick(spec: &str, names: &[&str]) -> Result<(String, Option<String>)> {
        let files: Vec<RepoFile> = names.iter().map(|n| file(n)).collect();
        match choose(&spec.parse().unwrap(), &files)? {
            Choice::Gguf { llm, mmproj } => Ok((llm.name, mmproj.map(|m| m.name))),
            Choice::Transformers { files, preset } => Ok((
                format!("convert {preset}"),
                Some(
                    files
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            )),
        }
    }

    #[test]
    fn names_with_escape_sequences_or_outside_the_snapshot_are_not_taken() {
        for name in [
            "llava-Q4_K_M.gguf",
            "mmproj-f16.gguf",
            "README.md",
            "é.gguf",
        ] {
            assert!(plain_name(name), "{name}");
        }
        for name in [
            "\u{1b}[2Jllava-Q4_K_M.gguf",
            "\u{1b}]0;owned\u{7}.gguf",
            "a\nb.gguf",
            "",
            ".hidden.gguf",
            "../x.gguf",
            "sub/x.gguf",
            "a\\b.gguf",
        ] {
            assert!(!plain_name(name), "{name:?}");
        }
    }

    #[test]
    fn specs_are_parsed_and_hostile_ones_refused() {
        let s: Spec = "cjpais/llava-1.6-mistral-7b-gguf:q4_k_m".parse().unwrap();
        assert_eq!(s.repo, "cjpais/llava-1.6-mistral-7b-gguf");
        assert_eq!(s.quant.as_deref(), Some("Q4_K_M"));
        assert_eq!("a/b".parse::<Spec>().unwrap().quant, None);
        for bad in [
            "", "a", "a/b/c", "../b", "a/..", "/b", "a/", "a/b:", "a/b:Q4 K", "-x/y", "a b/c",
        ] {
            assert!(bad.parse::<Spec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revisions_stay_inside_the_refs_directory() {
        for good in [
            "main",
            "v1.0",
            "refs/pr/12",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert_eq!(revision(good).as_deref(), Ok(good));
        }
        for bad in [
            "", "..", "../x", "a/../b", "/etc", "a//b", "a\\b", "a\nb", "x/.",
        ] {
            assert!(revision(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantization_tags_are_read_from_llama_cpp_style_names() {
        let tag = |n| quant_of(n).map(|r| QUANTS[r]);
        assert_eq!(tag("llava-v1.6-mistral-7b.Q4_K_M.gguf"), Some("Q4_K_M"));
        assert_eq!(tag("ggml-model-q4_k.gguf"), Some("Q4_K"));
        assert_eq!(tag("llava-v1.5-7b-mmproj-model-f16.gguf"), Some("F16"));
        assert_eq!(tag("model-IQ3_XXS-00001-of-00002.gguf"), Some("IQ3_XXS"));
        assert_eq!(tag("q4_k_m-but-no-tag.gguf"), Some("Q4_K_M"));
        assert_eq!(tag("tinyllama.gguf"), None);
        assert!(is_split("model-Q4_K_M-00001-of-00002.gguf"));
        assert!(!is_split("model-Q4_K_M.gguf"));
    }

    #[test]
    fn the_asked_or_closest_quantization_and_the_f16_mmproj_are_chosen() {
        let repo = [
            "README.md",
            "llava-v1.5-7b-Q2_K.gguf",
            "llava-v1.5-7b-Q4_K_M.gguf",
            "llava-v1.5-7b-Q5_K_M.gguf",
            "llava-v1.5-7b-Q8_0.gguf",
            "mmproj-model-Q8_0.gguf",
            "mmproj-model-f16.gguf",
        ];
        let (llm, mmproj) = pick("o/r", &repo).unwrap();
        assert_eq!(llm, "llava-v1.5-7b-Q4_K_M.gguf");
        assert_eq!(mmproj.as_deref(), Some("mmproj-model-f16.gguf"));
        assert_eq!(
            pick("o/r:Q8_0", &repo).unwrap().0,
            "llava-v1.5-7b-Q8_0.gguf"
        );
        // Q6_K sits between Q8_0 and Q5_K_M: the tie goes to the larger.
        assert_eq!(
            pick("o/r:Q6_K", &repo).unwrap().0,
            "llava-v1.5-7b-Q8_0.gguf"
        );
        assert_eq!(
            pick("o/r:Q3_K_S", &repo).unwrap().0,
            "llava-v1.5-7b-Q2_K.gguf"
        );
        assert_eq!(
            pick("o/r:Q4_0", &repo).unwrap().0,
            "llava-v1.5-7b-Q4_K_M.gguf"
        );
        // Q4_K is llama.cpp's other name for Q4_K_M (mys/ggml_llava-v1.5-7b's files).
        let old_names = [
            "ggml-model-f16.gguf",
            "ggml-model-q4_k.gguf",
            "ggml-model-q5_k.gguf",
            "mmproj-model-f16.gguf",
        ];
        let (llm, mmproj) = pick("o/r", &old_names).unwrap();
        assert_eq!(llm, "ggml-model-q4_k.gguf");
        assert_eq!(mmproj.as_deref(), Some("mmproj-model-f16.gguf"));
        let spec: Spec = "o/r".parse().unwrap();
        assert!(exact(&spec, &choose(&spec, &old_names.map(file)).unwrap()));
        assert_eq!(
            pick("o/r:Q5_K_M", &old_names).unwrap().0,
            "ggml-model-q5_k.gguf"
        );
        let e = pick("o/r:Q9_9", &repo).unwrap_err().to_string();
        assert!(e.contains("unknown quantization \"Q9_9\""), "{e}");
        // No mmproj: text only. Only an mmproj: an error.
        assert_eq!(pick("o/r", &["a-Q4_0.gguf"]).unwrap().1, None);
        let e = pick("o/r", &["mmproj-f16.gguf"]).unwrap_err().to_string();
        assert!(e.contains("no LLM GGUF file"), "{e}");
        let e = pick(
            "o/r",
            &[
                "m-Q4_K_M-00001-of-00002.gguf",
                "m-Q4_K_M-00002-of-00002.gguf",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("split GGUF"), "{e}");
    }

    #[test]
    fn a_transformers_repository_is_converted_with_a_preset() {
        let repo = [
            "README.md",
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "tokenizer.json",
            "tokenizer_config.json",
            "tf_model.h5",
        ];
        let (what, files) = pick("o/r", &repo).unwrap();
        assert_eq!(what, "convert q4_k_m");
        assert_eq!(
            files.unwrap(),
            "config.json,model-00001-of-00002.safetensors,model-00002-of-00002.safetensors,\
             model.safetensors.index.json,tokenizer.json,tokenizer_config.json"
        );
        // PyTorch weights only when there are no safetensors.
        let (_, files) = pick("o/r:q8_0", &["config.json", "pytorch_model.bin"]).unwrap();
        assert_eq!(files.unwrap(), "config.json,pytorch_model.bin");
        let e = pick("o/r:Q2_K", &repo).unwrap_err().to_string();
        assert!(e.contains("presets"), "{e}");
        let e = pick("o/r", &["README.md"]).unwrap_err().to_string();
        assert!(
            e.contains("neither GGUF files nor a transformers checkpoint"),
            "{e}"
        );
    }
}
