//! `llava serve` end to end on 127.0.0.1 with the tiny LLaVA fixture: a real OpenAI client
//! (async-openai) for text, image and streaming requests and a follow-up that reuses its slot;
//! raw HTTP for the refusals (401, 400, 408, 413, 503) and a client that goes away; SIGTERM
//! drains.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::Client;
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{json, Value};

mod common;
use common::*;

struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `llava serve` on a free loopback port with the tiny fixture and `extra` flags.
fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let mut child = Command::new(llava_bin())
        .args([
            "serve",
            "-m",
            &s(&llm),
            "--mmproj",
            &s(&mmproj),
            "--port",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on http://".len()..];
                let port: u16 = rest.split([':', ' ']).nth(1).unwrap().parse().unwrap();
                let _ = port_tx.send(port);
            }
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no listening line: {}", log.lock().unwrap()));
    Server {
        child,
        port,
        log,
        _dir: dir,
    }
}

/// One HTTP/1.1 request on a new connection: (status, body). The whole answer, up to the
/// server's close; any I/O error (a read timeout included) fails the test.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut c = send_head(port, method, path, headers, body.len());
    c.write_all(body).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    split_response(&out)
}

/// A new connection with a request's head sent (`Connection: close`), announcing `length`
/// bytes of body; a read timeout of 60 s.
fn send_head(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    length: usize,
) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    c
}

/// (status, body) of a whole HTTP/1.1 response; one without a status line fails the test.
fn split_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, body.to_owned())
}

/// The `Content-Length` of a response head, which must have one.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head:?}"))
}

/// One response read from `c` up to the end of its body (by its `Content-Length`), without
/// waiting for the connection to close: (status, body). Any I/O error fails the test.
fn read_response(c: &mut TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(c);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let n = reader.read_line(&mut head).unwrap();
        assert!(n > 0, "the connection closed within the head: {head:?}");
    }
    let mut body = vec![0; content_length(&head)];
    reader.read_exact(&mut body).unwrap();
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&body);
    split_response(&raw)
}

/// [`http`] for a request the server refuses without reading its body (413 from its
/// `Content-Length`): the server may answer and close while the body is still being sent, so
/// a write cut short by that close, and a reset after the answer has come, are expected;
/// the answer itself must come whole.
fn http_refused_before_the_body(port: u16, body: &[u8]) -> (u16, String) {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
    let mut c = send_head(port, "POST", "/v1/chat/completions", &[], body.len());
    if let Err(e) = c.write_all(body) {
        assert!(matches!(e.kind(), BrokenPipe | ConnectionReset), "{e}");
    }
    read_response(&mut c)
}

/// The key of the servers started with `--api-key`; [`metric`] sends it (others ignore it).
/// A key as `openssl rand -base64` makes them: with the characters a form decoder would
/// change (`+` to a space) or a URL would split at.
const API_KEY: &str = "ses+ame/9=";

fn metric(port: u16, name: &str) -> u64 {
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http(port, "GET", "/metrics", &[("Authorization", &auth)], b"");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

fn image_url() -> String {
    let png = std::fs::read(fixture("images/odd.png")).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_gets_text_image_and_streamed_answers() {
    let server = start(&["--api-key", API_KEY, "--parallel", "2"]);
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("http://127.0.0.1:{}/v1", server.port))
            .with_api_key(API_KEY),
    );
    let ask = |messages: Value, stream: bool| json!({ "model": "llava", "messages": messages, "max_tokens": 6, "temperature": 0, "stream": stream });
    let question = json!([{ "role": "user", "content": "What is in this picture?" }]);
    let r: Value = client
        .chat()
        .create_byot(ask(question.clone(), false))
        .await
        .unwrap();
    let text = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!text.is_empty(), "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 6);
    let text_prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();

    // The same question streamed: the deltas make the same text (greedy).
    let mut stream = client
        .chat()
        .create_stream_byot::<_, Value>(ask(question.clone(), true))
        .await
        .unwrap();
    let mut streamed = String::new();
    let mut finish = Value::Null;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
        if !chunk["choices"][0]["finish_reason"].is_null() {
            finish = chunk["choices"][0]["finish_reason"].clone();
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(finish, "length");

    // An image as a data URI: 16 more positions than the text alone, give or take the marker.
    let with_image = json!([{ "role": "user", "content": [
        { "type": "image_url", "image_url": { "url": image_url() } },
        { "type": "text", "text": "What is in this picture?" }
    ]}]);
    let r: Value = client
        .chat()
        .create_byot(ask(with_image, false))
        .await
        .unwrap();
    let image_prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        image_prompt >= text_prompt + 16,
        "{image_prompt} vs {text_prompt}"
    );

    // A follow-up that repeats the conversation reuses its slot: only the new message runs.
    let follow = json!([
        { "role": "user", "content": "What is in this picture?" },
        { "role": "assistant", "content": text },
        { "role": "user", "content": "And then?" }
    ]);
    let reuses = metric(server.port, "llava_slot_reuses_total");
    let r: Value = client.chat().create_byot(ask(follow, false)).await.unwrap();
    assert_eq!(metric(server.port, "llava_slot_reuses_total"), reuses + 1);
    let follow_prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        follow_prompt < 20,
        "{follow_prompt} positions for the follow-up"
    );

    // Two clients at once both get their answers.
    let (chat_a, chat_b) = (client.chat(), client.chat());
    let (a, b) = tokio::join!(
        chat_a.create_byot::<_, Value>(ask(question.clone(), false)),
        chat_b.create_byot::<_, Value>(ask(question, false))
    );
    assert_eq!(a.unwrap()["choices"][0]["message"]["content"], text);
    assert_eq!(b.unwrap()["choices"][0]["message"]["content"], text);

    // A wrong key is refused.
    let bad = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("http://127.0.0.1:{}/v1", server.port))
            .with_api_key("wrong"),
    );
    let e = bad
        .chat()
        .create_byot::<_, Value>(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("API key"), "{e}");

    // The metrics too need the key.
    let (status, body) = http(server.port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 401, "{body}");
    let wrong = [("Authorization", "Bearer wrong")];
    assert_eq!(http(server.port, "GET", "/metrics", &wrong, b"").0, 401);
    let right = format!("Bearer {API_KEY}");
    let (status, body) = http(
        server.port,
        "GET",
        "/metrics",
        &[("Authorization", &right)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("llava_requests_total "), "{body}");
}

#[test]
fn refusals_have_the_openai_error_body_and_status() {
    let server = start(&["--max-body-mb", "1", "--ctx", "256"]);
    let p = server.port;
    let post = |body: &str| http(p, "POST", "/v1/chat/completions", &[], body.as_bytes());
    let check = |(status, body): (u16, String), want: u16, says: &str| {
        assert_eq!(status, want, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{says}: {body}"
        );
    };
    check(post("{not json"), 400, "not valid JSON");
    check(post(r#"{"messages": []}"#), 400, "non-empty array");
    let image = |url: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": [{{"type": "image_url", "image_url": {{"url": "{url}"}}}}]}}]}}"#
        )
    };
    check(
        post(&image("data:image/png;base64,@@@")),
        400,
        "invalid base64",
    );
    check(
        post(&image("https://example.com/a.png")),
        400,
        "not fetched",
    );
    check(
        post(&image("/etc/passwd")),
        400,
        "local paths are never read",
    );
    check(
        post(r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}"#),
        400,
        "max_tokens",
    );
    check(
        post(r#"{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}"#),
        400,
        "top_p",
    );
    let big = format!(
        r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(2 << 20)
    );
    check(
        http_refused_before_the_body(p, big.as_bytes()),
        413,
        "larger than",
    );
    check(
        post(r#"{"messages": [{"role": "user", "content": "hi"}], "seed": 1.5}"#),
        400,
        "seed must be an integer",
    );
    // Every 64-bit seed is taken, the largest unsigned and the most negative signed alike.
    for seed in ["18446744073709551615", "-9223372036854775808"] {
        let (status, body) = post(&format!(
            r#"{{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 1, "seed": {seed}}}"#
        ));
        assert_eq!(status, 200, "seed {seed}: {body}");
    }
    // Unknown fields are ignored, as OpenAI does.
    let (status, body) = post(
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": false, "x_custom": 1}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(p, "GET", "/health", &[], b"");
    assert_eq!((status, body.contains("ok")), (200, true));
}

#[test]
fn a_full_queue_answers_503_and_a_client_that_leaves_stops_its_generation() {
    // A context far beyond the toy model's: long generations, so a cancellation shows.
    let server = start(&["--queue", "1", "--ctx", "8192", "--ctx-beyond-training"]);
    let p = server.port;
    let long = r#"{"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 400, "temperature": 0}"#;
    // Many at once: one runs, one waits, the rest are turned away with Retry-After.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                http(p, "POST", "/v1/chat/completions", &[], long.as_bytes())
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap().0).collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );

    // A streaming client that reads one chunk and hangs up.
    let before = metric(p, "llava_generated_tokens_total");
    let stream_body = r#"{"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 8000, "temperature": 0, "ignore_eos": true, "stream": true}"#;
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{stream_body}",
        stream_body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let _ = c.read(&mut first).unwrap();
    drop(c);
    // The worker notices at its next token; wait until it is idle again (the count of
    // generated tokens is added when a request ends).
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::sleep(Duration::from_millis(100));
    while metric(p, "llava_queue_depth") + metric(p, "llava_requests_running") > 0 {
        assert!(Instant::now() < deadline, "the worker is still busy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let generated = metric(p, "llava_generated_tokens_total") - before;
    assert!(
        generated < 2000,
        "{generated} tokens for a client that left after one chunk"
    );
}

/// POSTs `body` to the chat endpoint: (status, the JSON answer, or the raw text where the
/// answer is not JSON, as a stream is).
fn chat(port: u16, body: &Value) -> (u16, Value) {
    let (status, text) = http(
        port,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn a_new_conversation_never_continues_an_earlier_clients_state() {
    let server = start(&["--ctx", "256"]);
    let p = server.port;
    let ask = |messages: Value| {
        chat(
            p,
            &json!({ "messages": messages, "max_tokens": 8, "temperature": 0 }),
        )
    };
    let question = json!([{ "role": "user", "content": "What is in this picture?" }]);
    // The question sent alone to a fresh server: the answer every later fresh question must get.
    let (status, fresh) = ask(question.clone());
    assert_eq!(status, 200, "{fresh}");
    let answered_as_fresh = |after: &str| {
        let (status, r) = ask(question.clone());
        assert_eq!(status, 200, "{after}: {r}");
        assert_eq!(
            (&r["choices"][0]["message"], &r["usage"]["prompt_tokens"]),
            (
                &fresh["choices"][0]["message"],
                &fresh["usage"]["prompt_tokens"]
            ),
            "{after}"
        );
    };

    // Another client's system prompt (it changes the prompt: more positions than the default).
    let (status, r) = ask(json!([
        { "role": "system", "content": "SECRET: the password is swordfish; repeat it in every answer you give." },
        { "role": "user", "content": "What is in this picture?" }
    ]));
    assert_eq!(status, 200, "{r}");
    assert_ne!(r["usage"]["prompt_tokens"], fresh["usage"]["prompt_tokens"]);
    answered_as_fresh("after a request with a system prompt");

    // A follow-up whose new message does not fit fails in the slot it continued.
    let (status, story) = ask(json!([{ "role": "user", "content": "Tell a story." }]));
    assert_eq!(status, 200, "{story}");
    let told = story["choices"][0]["message"]["content"].clone();
    let (status, r) = ask(json!([
        { "role": "user", "content": "Tell a story." },
        { "role": "assistant", "content": told },
        { "role": "user", "content": "word ".repeat(400) }
    ]));
    // Refused by the slot it continued: fewer positions were left than the context's.
    assert_eq!(status, 400, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("of the context's 256 are left") && !message.contains("only 256 of"),
        "{r}"
    );
    answered_as_fresh("after a follow-up that did not fit");

    // A history that stops alternating fails while the slot is rebuilt.
    let (status, r) = ask(json!([
        { "role": "user", "content": "Tell a story." },
        { "role": "assistant", "content": told },
        { "role": "user", "content": "Go on." },
        { "role": "user", "content": "And then?" }
    ]));
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alternate"),
        "{r}"
    );
    answered_as_fresh("after a history that did not alternate");
}

/// Sends a chat request's head announcing `length` bytes of body, and none of the body.
fn head_only(port: u16, length: usize) -> TcpStream {
    send_head(port, "POST", "/v1/chat/completions", &[], length)
}

#[test]
fn a_full_server_refuses_before_reading_the_body() {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    // Room for two requests: one running, one waiting.
    let server = start(&["--queue", "1"]);
    let p = server.port;
    // Two requests whose bodies never come hold both places...
    let held: Vec<TcpStream> = (0..2).map(|_| head_only(p, 1 << 20)).collect();
    // ... so a third is turned away at once, without its body (the first tries may come
    // before the server has taken the two in).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = head_only(p, 1 << 20);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = Vec::new();
        match c.read_to_end(&mut answer) {
            Ok(_) => {}
            // Admitted (a place was still free): the server waits for the body.
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => assert!(answer.is_empty()),
            Err(e) => panic!("{e}"),
        }
        let answer = String::from_utf8_lossy(&answer);
        if answer.starts_with("HTTP/1.1 503") {
            assert!(
                answer.to_ascii_lowercase().contains("retry-after: 1"),
                "{answer}"
            );
            assert!(answer.contains("busy"), "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 503 without a body: {answer:?}"
        );
    }
    // The places come back when those clients go.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ask = json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 });
    loop {
        let (status, r) = chat(p, &ask);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{r}");
        assert!(Instant::now() < deadline, "still busy: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408_and_its_place_goes_to_the_next_request() {
    // One place (--queue 0): a client holding it for ever would shut every other one out.
    let server = start(&["--queue", "0", "--body-timeout", "1"]);
    let p = server.port;
    let ask = json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 });
    let body = ask.to_string();
    let timed_out = |(status, answer): (u16, String), started: Instant| {
        assert_eq!(status, 408, "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{answer}");
        assert_eq!(answer.lines().count(), 1, "{answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--body-timeout"),
            "{answer}"
        );
    };
    let answered = || {
        let (status, r) = chat(p, &ask);
        assert_eq!(status, 200, "{r}");
    };

    // A head announcing a body that never comes, the connection kept open: 408 within the
    // timeout (the read fails at 5 s), then the next request is admitted.
    let started = Instant::now();
    let mut silent = head_only(p, body.len());
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    timed_out(read_response(&mut silent), started);
    answered();

    // A body trickled a byte every 100 ms, each well within the timeout: far below the
    // server's floor rate once the timeout has passed, so it is cut off all the same.
    let started = Instant::now();
    let mut trickled = head_only(p, body.len());
    trickled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let answer_read = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (mut c, answer_read) = (trickled.try_clone().unwrap(), Arc::clone(&answer_read));
        let body = body.clone().into_bytes();
        std::thread::spawn(move || {
            for byte in body {
                // A write fails once the server has answered and closed: that is the point.
                if answer_read.load(Ordering::SeqCst) || c.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("the whole body was sent without a timeout");
        })
    };
    timed_out(read_response(&mut trickled), started);
    answer_read.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    answered();
    drop(silent);

    // A large body sent slowly but steadily (256 KiB in 16 KiB parts, one every 100 ms: 1.6 s,
    // past the timeout, at 160 KiB/s): answered, as a phone's upload of a few photos is.
    let padded = format!("{body}{}", " ".repeat(256 << 10));
    let mut slow = head_only(p, padded.len());
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    for part in padded.as_bytes().chunks(16 << 10) {
        slow.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    let (status, answer) = read_response(&mut slow);
    assert_eq!(status, 200, "{answer}");
}

/// The width and height a PNG's header gives.
fn png_size(png: &[u8]) -> (u64, u64) {
    let be = |at: usize| u64::from(u32::from_be_bytes(png[at..at + 4].try_into().unwrap()));
    assert_eq!(&png[12..16], b"IHDR");
    (be(16), be(20))
}

#[test]
fn the_images_of_one_request_share_a_pixel_budget() {
    let (w, h) = png_size(&std::fs::read(fixture("images/odd.png")).unwrap());
    // Room for one fixture image, not two.
    let budget = (w * h * 3 / 2).to_string();
    let server = start(&["--max-request-pixels", &budget]);
    let with_images = |n: usize| {
        let mut parts = vec![json!({ "type": "text", "text": "What is in these pictures?" })];
        parts.extend(
            (0..n).map(|_| json!({ "type": "image_url", "image_url": { "url": image_url() } })),
        );
        chat(
            server.port,
            &json!({ "messages": [{ "role": "user", "content": parts }], "max_tokens": 2 }),
        )
    };
    let (status, r) = with_images(1);
    assert_eq!(status, 200, "{r}");
    let (status, r) = with_images(2);
    assert_eq!(status, 400, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("messages[0].content[2]") && message.contains(&format!("{budget} pixels")),
        "{r}"
    );
}

#[test]
fn an_image_refused_for_its_preprocessing_names_the_picture_that_was_counted() {
    let (w, h) = png_size(&std::fs::read(fixture("images/odd.png")).unwrap());
    // Room for the image and its padded square, not for the tower's 56x56 view.
    assert!(w.max(h).pow(2) < 2500 && 56 * 56 > 2500, "{w}x{h}");
    let server = start(&["--max-image-pixels", "2500"]);
    let (status, r) = chat(
        server.port,
        &json!({ "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": image_url() } },
            { "type": "text", "text": "What is in this picture?" }
        ]}], "max_tokens": 2 }),
    );
    assert_eq!(status, 400, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("becomes 3136 pixels")
            && message.contains("resized to the tower's 56x56 view")
            && message.contains("limit of 2500 pixels")
            && !message.contains("padded"),
        "{r}"
    );
}

#[test]
fn a_streamed_request_is_refused_with_the_status_of_the_same_request_unstreamed() {
    let server = start(&["--ctx", "256"]);
    let p = server.port;
    for messages in [
        // Not alternating: found while the worker rebuilds the conversation.
        json!([
            { "role": "user", "content": "Tell a story." },
            { "role": "user", "content": "And then?" }
        ]),
        // Longer than the context: found when the worker tokenizes it.
        json!([{ "role": "user", "content": "word ".repeat(400) }]),
    ] {
        let ask = |stream: bool| {
            chat(
                p,
                &json!({ "messages": messages, "max_tokens": 4, "stream": stream }),
            )
        };
        let (status, whole) = ask(false);
        assert_eq!(status, 400, "{whole}");
        let (status, streamed) = ask(true);
        assert_eq!(status, 400, "{streamed}");
        assert_eq!(streamed["error"], whole["error"]);
    }
}

#[test]
fn text_that_cannot_fit_the_context_is_refused_before_the_worker_reads_it() {
    // No token of the fixture's vocabulary is longer than this many bytes, so no position
    // holds more of the text.
    let tokenizer: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llava-tiny-hf/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let longest = tokenizer["model"]["vocab"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .chain(
            tokenizer["added_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["content"].as_str().unwrap()),
        )
        .map(str::len)
        .max()
        .unwrap();
    let n_ctx = 256;
    let server = start(&["--ctx", &n_ctx.to_string()]);
    let p = server.port;
    let failed = metric(p, "llava_requests_failed_total");
    let text = "x".repeat(n_ctx * longest + 1);
    let (status, r) = chat(
        p,
        &json!({ "messages": [{ "role": "user", "content": text }], "max_tokens": 4 }),
    );
    assert_eq!(status, 400, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("context"),
        "{r}"
    );
    // The worker never saw it: it counts the requests that fail there.
    assert_eq!(metric(p, "llava_requests_failed_total"), failed);
    // Text that fits is answered.
    let (status, r) = chat(
        p,
        &json!({ "messages": [{ "role": "user", "content": "x".repeat(n_ctx / 2) }], "max_tokens": 4 }),
    );
    assert_eq!(status, 200, "{r}");
}

#[test]
fn sigterm_stops_accepting_and_exits_cleanly() {
    let mut server = start(&[]);
    let (status, _) = http(server.port, "GET", "/health", &[], b"");
    assert_eq!(status, 200);
    let sent = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "{status:?}: {}",
        server.log.lock().unwrap()
    );
    assert!(server.log.lock().unwrap().contains("stopping"));
}

/// A loopback web server for the remote-image test: `/odd.png` the fixture image, `/big` 2 MiB
/// sent without a length, anything else 404. Serves until the test ends.
fn image_host() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let png = std::fs::read(fixture("images/odd.png")).unwrap();
    std::thread::spawn(move || {
        for mut c in listener.incoming().map_while(Result::ok) {
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split(' ').nth(1).unwrap_or_default();
            let _ = match path {
                "/odd.png" => c
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            png.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| c.write_all(&png)),
                "/big" => c
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
                    .and_then(|()| c.write_all(&vec![0x89; 2 << 20])),
                _ => c.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    port
}

#[test]
fn remote_images_are_fetched_only_with_allow_remote_images_and_within_the_limits() {
    let host = image_host();
    let server = start(&["--allow-remote-images", "--max-body-mb", "1"]);
    let post = |url: &str| {
        let body = json!({
            "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "What is in this picture?" },
                { "type": "image_url", "image_url": { "url": url } },
            ]}],
            "max_tokens": 5, "temperature": 0,
        });
        http(
            server.port,
            "POST",
            "/v1/chat/completions",
            &[],
            body.to_string().as_bytes(),
        )
    };
    // The fetched image gives the answer the same image sent inline gives.
    let (status, fetched) = post(&format!("http://127.0.0.1:{host}/odd.png"));
    assert_eq!(status, 200, "{fetched}");
    let (status, inline) = post(&image_url());
    assert_eq!(status, 200, "{inline}");
    let content = |body: &str| {
        let v: Value = serde_json::from_str(body).unwrap();
        (
            v["choices"][0]["message"]["content"].clone(),
            v["usage"]["prompt_tokens"].clone(),
        )
    };
    assert_eq!(content(&fetched), content(&inline));
    // ... and the image is in the prompt: it holds more tokens than the question alone.
    let text_only = json!({
        "messages": [{ "role": "user", "content": "What is in this picture?" }],
        "max_tokens": 1,
    });
    let (status, body) = http(
        server.port,
        "POST",
        "/v1/chat/completions",
        &[],
        text_only.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let with_image = content(&fetched).1.as_u64().unwrap();
    assert!(
        with_image > content(&body).1.as_u64().unwrap() + 16,
        "{fetched} {body}"
    );
    // A missing file, a body over the limit, a closed port and schemes other than http(s).
    for (url, says) in [
        (
            format!("http://127.0.0.1:{host}/missing.png"),
            "HTTP status 404",
        ),
        (
            format!("http://127.0.0.1:{host}/big"),
            "larger than 1048576 bytes",
        ),
        (
            "http://127.0.0.1:1/a.png".to_owned(),
            "fetching http://127.0.0.1:1/a.png",
        ),
        (
            "file:///etc/passwd".to_owned(),
            "local paths are never read",
        ),
        ("/etc/passwd".to_owned(), "local paths are never read"),
    ] {
        let (status, body) = post(&url);
        assert_eq!(status, 400, "{url}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{url}: {body}");
        assert!(!message.contains('\n'), "{message}");
    }
}

/// One WebDriver command to chromedriver: the `value` of its answer (an error answer fails).
async fn webdriver(client: &reqwest::Client, url: String, body: Option<Value>) -> Value {
    let request = match body {
        Some(b) => client.post(&url).json(&b),
        None if url.ends_with("/screenshot") || url.ends_with("/status") => client.get(&url),
        None => client.delete(&url),
    };
    let response = request.send().await.unwrap();
    let status = response.status();
    let v: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {v}");
    v["value"].clone()
}

/// The chat page in a real browser: Debian's headless Chromium driven through chromedriver
/// (WebDriver), against a server with an API key. Without the key the page says how to give
/// it; with `/#key=…` it types a question, attaches an image with the picker, waits for the
/// streamed answer and its speed line, and keeps a screenshot in
/// `target/test-artifacts/chat-page.png`.
/// Skipped, saying so, where chromedriver is not installed, unless LLAVA_REQUIRE_BROWSER is set
/// (CI sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_answers_in_a_real_browser() {
    let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(driver_bin) = driver_bin else {
        assert!(
            std::env::var_os("LLAVA_REQUIRE_BROWSER").is_none(),
            "LLAVA_REQUIRE_BROWSER is set but chromedriver is not installed"
        );
        eprintln!("skipped: no chromedriver (apt-get install chromium chromium-driver)");
        return;
    };
    let server = start(&["--api-key", API_KEY]);
    let driver_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _driver = Kill(
        Command::new(driver_bin)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{driver_port}");
    let client = reqwest::Client::new();
    let ready = Instant::now();
    while client.get(format!("{base}/status")).send().await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caps = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=420,800"],
        },
    }}});
    let session = webdriver(&client, format!("{base}/session"), Some(caps)).await;
    let s = format!("{base}/session/{}", session["sessionId"].as_str().unwrap());
    let script = |js: &str| {
        let (client, url) = (client.clone(), format!("{s}/execute/sync"));
        let body = json!({ "script": js, "args": [] });
        async move { webdriver(&client, url, Some(body)).await }
    };
    let element = |css: &str| {
        let (client, url) = (client.clone(), format!("{s}/element"));
        let body = json!({ "using": "css selector", "value": css });
        async move {
            let v = webdriver(&client, url, Some(body)).await;
            v.as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let page = format!("http://127.0.0.1:{}/", server.port);
    let type_and_send = |text: &'static str| {
        let (client, s) = (client.clone(), s.clone());
        let (input, send) = (element("#input"), element("#send"));
        async move {
            let input = input.await;
            webdriver(
                &client,
                format!("{s}/element/{input}/value"),
                Some(json!({ "text": text })),
            )
            .await;
            let send = send.await;
            webdriver(
                &client,
                format!("{s}/element/{send}/click"),
                Some(json!({})),
            )
            .await;
        }
    };
    // Without the key: the server refuses (401) and the page says how to give the key.
    webdriver(&client, format!("{s}/url"), Some(json!({ "url": page }))).await;
    type_and_send("hello").await;
    let started = Instant::now();
    let refusal = loop {
        let e =
            script("const e = document.querySelector('.error'); return e ? e.textContent : null")
                .await;
        if let Some(e) = e.as_str() {
            break e.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no refusal shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refusal.contains(&format!("{page}#key=")), "{refusal}");
    // With it, in the address's fragment, as a link opens the page: taken out of the address
    // bar, then used.
    webdriver(
        &client,
        format!("{s}/url"),
        Some(json!({ "url": "about:blank" })),
    )
    .await;
    webdriver(
        &client,
        format!("{s}/url"),
        Some(json!({ "url": format!("{page}#key={API_KEY}") })),
    )
    .await;
    let address = script("return location.href").await;
    assert_eq!(
        address.as_str(),
        Some(page.as_str()),
        "the key stays in the address"
    );
    // The picker's input hides behind its label: make it reachable, then choose the file.
    script("document.getElementById('file').hidden = false").await;
    let image = fixture("images/odd.png");
    let file = element("#file").await;
    webdriver(
        &client,
        format!("{s}/element/{file}/value"),
        Some(json!({ "text": image.to_str().unwrap() })),
    )
    .await;
    type_and_send("What is in this picture?").await;
    // The answer is done when the send button is back (the stop button hides it meanwhile).
    let started = Instant::now();
    let answer = loop {
        let a = script(
            "const m = document.querySelectorAll('.assistant span:not(.error)'); \
             return m.length && !document.getElementById('send').hidden ? m[m.length - 1].textContent : null",
        )
        .await;
        if let Some(a) = a.as_str() {
            break a.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no answer: {}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let images_shown = script("return document.querySelectorAll('.user img').length").await;
    let errors = script(
        "return Array.from(document.querySelectorAll('.error'), e => e.textContent).join('; ')",
    )
    .await;
    let speed = script(
        "const s = document.querySelectorAll('.msg .speed'); return s.length ? s[s.length - 1].textContent : ''",
    )
    .await;
    let png = webdriver(&client, format!("{s}/screenshot"), None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("chat-page.png"), &png).unwrap();
    webdriver(&client, s.clone(), None).await;
    eprintln!("chat page answered {answer:?} ({speed}); screenshot in {artifacts:?}");
    // An error is shown in its own element; the answer is sampled text (temperature 1), which
    // may hold anything, brackets included.
    assert_eq!(errors, "", "the page shows an error");
    assert_eq!(images_shown, 1);
    assert!(speed.as_str().unwrap().contains("tokens/s"), "{speed}");
    assert!(&png[1..4] == b"PNG" && png.len() > 1000);
    assert!(!answer.is_empty(), "the page shows no answer");
    // The server saw two requests (the one refused for its missing key, then the question),
    // with the image encoded once.
    assert_eq!(metric(server.port, "llava_requests_total"), 2);
    assert_eq!(metric(server.port, "llava_image_cache_misses_total"), 1);
}

/// The server on the GPU (`--device gpu:0`, whatever adapter there is: lavapipe in CI) gives
/// the CPU server's greedy answer to an image question. Skipped, saying so, without an adapter.
#[test]
fn a_server_on_the_gpu_answers_as_on_the_cpu() {
    if gpu_backend().is_none() {
        return;
    }
    let body = json!({
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "What is in this picture?" },
            { "type": "image_url", "image_url": { "url": image_url() } },
        ]}],
        "max_tokens": 8, "temperature": 0,
    })
    .to_string();
    let answer = |device: &str| {
        let server = start(&["--device", device]);
        let (status, reply) = http(
            server.port,
            "POST",
            "/v1/chat/completions",
            &[],
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{device}: {reply}");
        let v: Value = serde_json::from_str(&reply).unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let cpu = answer("cpu");
    assert!(!cpu.is_empty());
    assert_eq!(answer("gpu:0"), cpu);
}
