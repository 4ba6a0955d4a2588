//! `llava pull` and `--hf` against a loopback Hub: a server written here that speaks the
//! Hub's URL layout (`/api/models/{repo}/revision/{rev}?blobs=true`,
//! `/{repo}/resolve/{rev}/{file}` with ranges, `x-repo-commit` and `etag`), serving fixture
//! repositories. It can drop a connection mid-file, list a wrong checksum, answer 404, and
//! refuse a gated repository without the right token. Nothing leaves the machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

mod common;
use common::*;

const TOKEN: &str = "hf_loopback_token";

struct RepoFile {
    name: String,
    bytes: Vec<u8>,
    /// Large files are LFS objects: the listing gives their sha256.
    lfs: bool,
    /// The sha256 the listing claims, when it is not the file's (a corrupted download).
    listed_sha: Option<String>,
    /// Full-body answers still to cut after half of what they send.
    drops: usize,
}

struct FakeRepo {
    commit: String,
    files: Vec<RepoFile>,
    gated: bool,
}

#[derive(Default)]
struct Hub {
    repos: Mutex<HashMap<String, FakeRepo>>,
    /// Every request: "GET path range".
    log: Mutex<Vec<String>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn serve(State(hub): State<Arc<Hub>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    hub.log
        .lock()
        .unwrap()
        .push(format!("GET {path} {}", range.clone().unwrap_or_default()));
    let mut repos = hub.repos.lock().unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/models/{owner}/{name}/revision/{rev}
    if let ["api", "models", owner, name, "revision", _rev] = parts.as_slice() {
        let Some(repo) = repos.get(&format!("{owner}/{name}")) else {
            return (StatusCode::NOT_FOUND, "Repository not found").into_response();
        };
        if repo.gated && !authorized {
            return (
                StatusCode::UNAUTHORIZED,
                "Access to this model is restricted",
            )
                .into_response();
        }
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = json!({"rfilename": f.name, "size": f.bytes.len()});
                if f.lfs {
                    let sha = f.listed_sha.clone().unwrap_or_else(|| sha256_hex(&f.bytes));
                    s["lfs"] = json!({"sha256": sha, "size": f.bytes.len()});
                }
                s
            })
            .collect();
        return axum::Json(
            json!({"id": format!("{owner}/{name}"), "sha": repo.commit, "siblings": siblings}),
        )
        .into_response();
    }
    // /{owner}/{name}/resolve/{rev}/{file}
    if let [owner, name, "resolve", _rev, file] = parts.as_slice() {
        let Some(repo) = repos.get_mut(&format!("{owner}/{name}")) else {
            return (StatusCode::NOT_FOUND, "Repository not found").into_response();
        };
        if repo.gated && !authorized {
            return (
                StatusCode::UNAUTHORIZED,
                "Access to this model is restricted",
            )
                .into_response();
        }
        let commit = repo.commit.clone();
        let Some(f) = repo.files.iter_mut().find(|f| f.name == *file) else {
            return (StatusCode::NOT_FOUND, "Entry not found").into_response();
        };
        let total = f.bytes.len();
        let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() {
                    total - 1
                } else {
                    b.parse().unwrap()
                };
                (a, b.min(total - 1))
            }
            None => (0, total - 1),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-repo-commit", commit.parse().unwrap());
        headers.insert(
            "etag",
            format!("\"{}\"", sha256_hex(&f.bytes)).parse().unwrap(),
        );
        headers.insert(
            "content-range",
            format!("bytes {start}-{end}/{total}").parse().unwrap(),
        );
        let body = f.bytes[start..=end].to_vec();
        let status = if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        // A full-body answer (not the one-byte probe) may be cut after half of it: the
        // client sees the declared length never arrive.
        if body.len() > 1 && f.drops > 0 {
            f.drops -= 1;
            let half = Bytes::from(body[..body.len() / 2].to_vec());
            let stream = futures_util::stream::iter(vec![
                Ok::<Bytes, std::io::Error>(half),
                Err(std::io::Error::other("connection dropped by the test")),
            ]);
            headers.insert("content-length", body.len().into());
            return (status, headers, Body::from_stream(stream)).into_response();
        }
        return (status, headers, body).into_response();
    }
    (StatusCode::NOT_FOUND, "no such route").into_response()
}

/// The loopback Hub, on its own thread and runtime for the test's life.
fn start_hub() -> (Arc<Hub>, SocketAddr) {
    let hub = Arc::new(Hub::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let state = Arc::clone(&hub);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(serve).with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
    });
    (hub, rx.recv().unwrap())
}

fn add_repo(hub: &Hub, id: &str, gated: bool, files: Vec<RepoFile>) {
    let commit = sha256_hex(id.as_bytes())[..40].to_owned();
    hub.repos.lock().unwrap().insert(
        id.to_owned(),
        FakeRepo {
            commit,
            files,
            gated,
        },
    );
}

fn file(name: &str, bytes: Vec<u8>) -> RepoFile {
    RepoFile {
        name: name.to_owned(),
        lfs: name.ends_with(".gguf") || name.ends_with(".safetensors"),
        bytes,
        listed_sha: None,
        drops: 0,
    }
}

/// `llava ARGS` with the Hub at `addr`, its cache in `home`, and no Hub variable of the
/// test's own environment.
fn llava_hub(addr: SocketAddr, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(llava_bin());
    for v in [
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_HOME",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HF_HOME", home)
        .env("HF_ENDPOINT", format!("http://{addr}"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn requests(hub: &Hub) -> usize {
    hub.log.lock().unwrap().len()
}

/// The tiny LLaVA fixture as a GGUF repository: its F32 LLM under two quantization names (the
/// bytes differ by a trailing byte, so which one came is visible) and its mmproj.
fn gguf_repo(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (llm, mmproj) = tiny_llava(dir);
    let llm = std::fs::read(llm).unwrap();
    let mut other = llm.clone();
    other.push(0);
    (llm, other, std::fs::read(mmproj).unwrap())
}

fn lines(o: &Output) -> Vec<PathBuf> {
    stdout(o).lines().map(PathBuf::from).collect()
}

#[test]
fn a_gguf_repository_is_pulled_once_then_runs_from_the_cache_offline() {
    let (hub, addr) = start_hub();
    let work = tempfile::tempdir().unwrap();
    let (q4, q8, mmproj) = gguf_repo(work.path());
    add_repo(
        &hub,
        "test/llava-tiny-gguf",
        false,
        vec![
            file("README.md", b"# tiny\n".to_vec()),
            file("llava-tiny-Q4_K_M.gguf", q4.clone()),
            file("llava-tiny-Q8_0.gguf", q8.clone()),
            file("mmproj-llava-tiny-f16.gguf", mmproj.clone()),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let o = llava_hub(addr, home.path(), &["pull", "test/llava-tiny-gguf"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprint!(
        "$ llava pull test/llava-tiny-gguf\n{}{}",
        stderr(&o),
        stdout(&o)
    );
    let paths = lines(&o);
    assert_eq!(paths.len(), 2, "{}", stdout(&o));
    assert!(paths[0].ends_with("llava-tiny-Q4_K_M.gguf"), "{paths:?}");
    assert!(paths[0].starts_with(
        home.path()
            .join("hub/models--test--llava-tiny-gguf/snapshots")
    ));
    assert_eq!(std::fs::read(&paths[0]).unwrap(), q4);
    assert_eq!(std::fs::read(&paths[1]).unwrap(), mmproj);
    // What was chosen and its size, before the download.
    let err = stderr(&o);
    assert!(err.contains("2 file(s)"), "{err}");
    assert!(
        err.contains(&format!(
            "llava-tiny-Q4_K_M.gguf ({:.1} MB)",
            q4.len() as f64 / 1e6
        )),
        "{err}"
    );
    assert!(!err.contains("README"), "{err}");

    // The same answer as the files given with -m/--mmproj, and not one request to the Hub:
    // the cache holds the asked quantization.
    let before = requests(&hub);
    let question = [
        "--image",
        fixture("images/odd.png")
            .to_str()
            .unwrap()
            .to_owned()
            .leak(),
        "-p",
        "What is in this picture?",
        "-n",
        "6",
        "--temp",
        "0",
    ];
    let mut by_hf = vec!["run", "--hf", "test/llava-tiny-gguf"];
    by_hf.extend(question);
    let o = llava_hub(addr, home.path(), &by_hf, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(requests(&hub), before, "a cached model touched the network");
    let (llm, mm) = (
        work.path().join("llm.gguf"),
        work.path().join("mmproj.gguf"),
    );
    let mut by_path = vec![
        "run",
        "-m",
        llm.to_str().unwrap(),
        "--mmproj",
        mm.to_str().unwrap(),
    ];
    by_path.extend(question);
    let local = llava(&by_path);
    assert!(local.status.success(), "{}", stderr(&local));
    assert_eq!(stdout(&o), stdout(&local));
    assert!(!stdout(&o).trim().is_empty());

    // Another quantization is not cached: offline refuses it by name; without a
    // quantization asked, offline takes what the cache holds. Online fetches it (and not the
    // cached mmproj again).
    for env in [&[("HF_HUB_OFFLINE", "1")][..], &[]] {
        let mut args = vec!["pull", "test/llava-tiny-gguf:Q8_0"];
        if env.is_empty() {
            args.push("--offline");
        }
        let o = llava_hub(addr, home.path(), &args, env);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("Q8_0 of test/llava-tiny-gguf: not in the Hub cache"),
            "{}",
            stderr(&o)
        );
    }
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/llava-tiny-gguf", "--offline"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&o), paths);
    let before = requests(&hub);
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/llava-tiny-gguf:q8_0"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&lines(&o)[0]).unwrap(), q8);
    let log = hub.log.lock().unwrap()[before..].join("\n");
    assert!(
        !log.contains("mmproj"),
        "the cached mmproj was fetched again:\n{log}"
    );
}

#[test]
fn an_interrupted_download_resumes_and_a_corrupt_one_is_removed() {
    let (hub, addr) = start_hub();
    let work = tempfile::tempdir().unwrap();
    let (q4, _, mmproj) = gguf_repo(work.path());
    let mut llm = file("tiny-Q4_K_M.gguf", q4.clone());
    // More cuts than the client's 3 retries: the first run fails, the second resumes.
    llm.drops = 5;
    add_repo(
        &hub,
        "test/flaky",
        false,
        vec![llm, file("mmproj-tiny-f16.gguf", mmproj)],
    );
    let home = tempfile::tempdir().unwrap();
    let o = llava_hub(addr, home.path(), &["pull", "test/flaky"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("test/flaky: tiny-Q4_K_M.gguf"), "{err}");
    assert!(err.contains("run the command again to resume"), "{err}");
    // The run already resumed within itself: a retry asked for the bytes after the first cut.
    let resumed_at = |log: &[String]| -> Vec<usize> {
        log.iter()
            .filter(|l| l.contains("tiny-Q4_K_M.gguf"))
            .filter_map(|l| l.rsplit("bytes=").next()?.strip_suffix('-')?.parse().ok())
            .filter(|&start: &usize| start > 0)
            .collect()
    };
    assert!(!resumed_at(&hub.log.lock().unwrap()).is_empty());
    let n = requests(&hub);
    let o = llava_hub(addr, home.path(), &["pull", "test/flaky"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&lines(&o)[0]).unwrap(), q4);
    // The second run started where the first left off, not at byte 0.
    let second = resumed_at(&hub.log.lock().unwrap()[n..]);
    assert!(second.iter().all(|&s| s > q4.len() / 2), "{second:?}");
    assert!(!second.is_empty());

    // A file whose bytes do not hash to the listed sha256 is refused and removed.
    let mut bad = file("tiny-Q4_K_M.gguf", q4.clone());
    bad.listed_sha = Some(sha256_hex(b"something else"));
    add_repo(&hub, "test/corrupt", false, vec![bad]);
    let o = llava_hub(addr, home.path(), &["pull", "test/corrupt"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("does not match the Hub's"), "{err}");
    assert!(err.contains("the file was removed"), "{err}");
    let repo_dir = home.path().join("hub/models--test--corrupt");
    let leftovers: Vec<_> = walk(&repo_dir)
        .into_iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .filter(|p| !p.to_string_lossy().contains("/refs/"))
        .filter(|p| p.extension().is_none_or(|e| e != "lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn missing_and_gated_repositories_give_one_line_that_says_what_to_do() {
    let (hub, addr) = start_hub();
    add_repo(
        &hub,
        "test/gated",
        true,
        vec![file("m-Q4_0.gguf", b"GGUF but tiny".to_vec())],
    );
    let home = tempfile::tempdir().unwrap();
    let one_line_error = |o: &Output, want: &str| {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
        let err = stderr(o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("llava: error: ") && err.contains(want),
            "{err}"
        );
    };
    let o = llava_hub(addr, home.path(), &["pull", "test/missing"], &[]);
    one_line_error(&o, &format!("test/missing: not found on http://{addr}"));
    let o = llava_hub(addr, home.path(), &["pull", "test/gated"], &[]);
    one_line_error(
        &o,
        "gated or private repository): accept its terms on the Hub, then set HF_TOKEN",
    );
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/gated"],
        &[("HF_TOKEN", "hf_wrong")],
    );
    one_line_error(&o, "refused access with this token");
    // The right token, from the environment or from `huggingface-cli login`'s file.
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/gated"],
        &[("HF_TOKEN", TOKEN)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no mmproj file"), "{}", stderr(&o));
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let o = llava_hub(addr, other.path(), &["pull", "test/gated"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Nothing to reach, and nothing cached.
    let o = llava_hub(
        "127.0.0.1:9".parse().unwrap(),
        home.path(),
        &["pull", "test/elsewhere"],
        &[],
    );
    one_line_error(&o, "cannot reach http://127.0.0.1:9");
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/elsewhere", "--offline"],
        &[],
    );
    one_line_error(&o, "not in the Hub cache");
    let o = llava_hub(addr, home.path(), &["pull", "../etc:Q4_0"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A repository file name that would leave the snapshot is never written.
    add_repo(
        &hub,
        "test/hostile",
        false,
        vec![file("../../../escape-Q4_K_M.gguf", b"x".to_vec())],
    );
    let o = llava_hub(addr, home.path(), &["pull", "test/hostile"], &[]);
    one_line_error(&o, "neither GGUF files nor a transformers checkpoint");
    assert!(!home.path().join("escape-Q4_K_M.gguf").exists());
}

/// The files of fixture directory `name`, as repository files.
fn fixture_files(name: &str) -> Vec<RepoFile> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(fixture(name)).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            files.push(file(&name, std::fs::read(e.path()).unwrap()));
        }
    }
    files
}

/// `llava ARGS` (a pull) that must succeed saying `said` on stderr: the LLM and mmproj paths
/// it prints.
fn pull_pair(addr: SocketAddr, home: &Path, args: &[&str], said: &str) -> Vec<PathBuf> {
    let o = llava_hub(addr, home, args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(said), "{}", stderr(&o));
    let paths = lines(&o);
    assert_eq!(paths.len(), 2, "{}", stdout(&o));
    paths
}

/// Logits of an image question, with `llava logits`.
fn image_logits(m: &Path, mm: &Path, out: &Path) -> Vec<f32> {
    let o = llava(&[
        "logits",
        "-m",
        m.to_str().unwrap(),
        "--mmproj",
        mm.to_str().unwrap(),
        "--image",
        fixture("images/odd.png").to_str().unwrap(),
        "--prompt",
        "USER: <image>\nWhat is this? ASSISTANT:",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    read_npy(out)
}

#[test]
fn an_original_llava_bin_checkpoint_brings_the_tower_its_config_names() {
    let (hub, addr) = start_hub();
    let mut files = fixture_files("llava-tiny-orig-bin");
    let config = files.iter_mut().find(|f| f.name == "config.json").unwrap();
    let text = String::from_utf8(config.bytes.clone()).unwrap();
    let named = "\"mm_vision_tower\": \"clip-tiny\"";
    assert!(text.contains(named), "{text}");
    config.bytes = text
        .replace(named, "\"mm_vision_tower\": \"test/clip-tiny-bin\"")
        .into_bytes();
    add_repo(&hub, "test/llava-orig-bin", false, files);
    add_repo(
        &hub,
        "test/clip-tiny-bin",
        false,
        fixture_files("clip-tiny-bin"),
    );
    let home = tempfile::tempdir().unwrap();
    let paths = pull_pair(
        addr,
        home.path(),
        &["pull", "test/llava-orig-bin:f32", "--vision-quant", "f32"],
        "names its vision tower, test/clip-tiny-bin",
    );
    // The same model as `llava convert` of the safetensors fixture with its tower.
    let work = tempfile::tempdir().unwrap();
    let o = llava(&[
        "convert",
        fixture("llava-tiny-orig").to_str().unwrap(),
        "--vision-tower",
        fixture("clip-tiny").to_str().unwrap(),
        "-q",
        "f32",
        "--vision-quant",
        "f32",
        "--outdir",
        work.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let local = image_logits(
        &work.path().join("llava-tiny-orig-f32.gguf"),
        &work.path().join("mmproj-llava-tiny-orig-f32.gguf"),
        &work.path().join("a.npy"),
    );
    let pulled = image_logits(&paths[0], &paths[1], &work.path().join("b.npy"));
    assert_eq!(pulled, local);
}

#[test]
fn a_transformers_repository_is_downloaded_and_converted_once() {
    let (hub, addr) = start_hub();
    let mut files = fixture_files("llava-tiny-hf");
    // A first run cut on tokenizer.json leaves config.json and the weights cached, but not
    // the tokenizer: the next run must fetch what is missing, not take the cache as whole.
    files
        .iter_mut()
        .find(|f| f.name == "tokenizer.json")
        .unwrap()
        .drops = 5;
    add_repo(&hub, "test/llava-tiny-hf", false, files);
    let home = tempfile::tempdir().unwrap();
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/llava-tiny-hf:f32", "--vision-quant", "f32"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("tokenizer.json"), "{}", stderr(&o));
    let paths = pull_pair(
        addr,
        home.path(),
        &["pull", "test/llava-tiny-hf:f32", "--vision-quant", "f32"],
        "converting test/llava-tiny-hf to f32",
    );
    assert!(paths[0].starts_with(home.path().join("llava-edge/models--test--llava-tiny-hf")));
    // The conversion is the one `llava convert` makes of the same checkpoint: same logits.
    let work = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(work.path());
    let pulled = image_logits(&paths[0], &paths[1], &work.path().join("a.npy"));
    let local = image_logits(&llm, &mmproj, &work.path().join("b.npy"));
    assert_eq!(pulled, local);
    // Once: a second pull neither downloads nor converts.
    let before = requests(&hub);
    let o = llava_hub(
        addr,
        home.path(),
        &["pull", "test/llava-tiny-hf:f32", "--vision-quant", "f32"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(requests(&hub), before);
    assert!(!stderr(&o).contains("converting"), "{}", stderr(&o));
    assert_eq!(lines(&o), paths);
}

/// A repository file whose name holds terminal escape sequences is not taken: its name never
/// reaches the terminal (nor the cache), and the pull says what is missing in one line.
#[test]
fn a_file_name_with_escape_sequences_is_not_taken_or_shown() {
    let (hub, addr) = start_hub();
    let evil = "\u{1b}]0;owned\u{7}\u{1b}[2Jllava-tiny-Q4_K_M.gguf";
    add_repo(
        &hub,
        "test/escapes",
        false,
        vec![
            file(evil, b"GGUF not really".to_vec()),
            file("mmproj-llava-tiny-f16.gguf", b"GGUF not really".to_vec()),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let o = llava_hub(addr, home.path(), &["pull", "test/escapes"], &[]);
    let err = stderr(&o);
    assert!(!err.contains(['\u{1b}', '\u{7}']), "{err:?}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no LLM GGUF file"), "{err}");
    assert!(
        walk(home.path())
            .iter()
            .all(|p| !p.to_string_lossy().contains('\u{1b}')),
        "{:?}",
        walk(home.path())
    );
}
