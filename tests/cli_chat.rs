//! `llava chat` in its piped mode (one turn per line of stdin) on the tiny LLaVA fixture:
//! follow-up turns prefill only their own tokens, /image attaches, /clear starts over, /save
//! writes a new file, and a full context drops the oldest turns with a notice, never a crash.

use std::path::Path;

mod common;
use common::*;

fn converted() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (llm, mmproj) = tiny_llava(dir.path());
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    (dir, s(&llm), s(&mmproj))
}

/// (prompt tokens, of them image tokens, context used) of each turn `chat -v` reports.
fn turns(stderr: &str) -> Vec<(usize, usize, usize)> {
    stderr
        .lines()
        .filter(|l| l.starts_with("turn "))
        .map(|l| {
            let num = |after: &str| -> usize {
                let at = l.find(after).unwrap() + after.len();
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            (num("prompt: "), num("tokens ("), num("context "))
        })
        .collect()
}

#[test]
fn follow_ups_prefill_only_their_own_tokens_and_images_attach() {
    let (dir, llm, mmproj) = converted();
    let image = fixture("images/odd.png");
    let image = image.to_str().unwrap();
    let transcript = dir.path().join("t.json");
    let input = format!(
        "What is in this picture?\nAnd then?\n/image {image}\nAnd this one?\n/save {}\n/save {}\n/clear\nWhat is in this picture?\n",
        transcript.display(),
        transcript.display()
    );
    let base = [
        "chat", "-m", &llm, "--mmproj", &mmproj, "--temp", "0", "-n", "6", "-v",
    ];
    let mut args = base.to_vec();
    args.extend(["--image", image]);
    let o = llava_stdin(&args, &input);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let t = turns(&err);
    assert_eq!(t.len(), 4, "{err}");
    // Turn 1: the system prompt, the image (16 positions) and the question.
    assert_eq!(t[0].1, 16, "{err}");
    // Turn 2 runs only "</s>USER: And then? ASSISTANT:" (the cut answer closed), no image:
    // a handful of tokens where turn 1 took 100 or more, and the context grows by them.
    assert_eq!(t[1].1, 0);
    assert!(t[1].0 < 20 && t[0].0 > 90, "{t:?}");
    assert_eq!(t[1].2, t[0].2 + t[1].0 + 6, "{t:?}");
    // Turn 3 carries the /image.
    assert_eq!(t[2].1, 16, "{t:?}");
    // After /clear the conversation starts at position 0 again, with the system prompt: the
    // context holds only that turn, which is turn 1 less its image and marker.
    assert_eq!(t[0].2, t[0].0 + 6, "{t:?}");
    assert_eq!(t[3].2, t[3].0 + 6, "{t:?}");
    assert!(t[3].0 > 80 && t[3].1 == 0, "{t:?}");
    assert!(err.contains("exists; /save writes a new file"), "{err}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&transcript).unwrap()).unwrap();
    let turns = saved["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3);
    assert_eq!(turns[2]["images"][0], image);
    assert_eq!(turns[1]["user"], "And then?");
    // Every answer was printed, one per line.
    assert_eq!(stdout(&o).lines().count(), 4, "{}", stdout(&o));
}

#[test]
fn a_full_context_drops_the_oldest_turns_and_goes_on() {
    let (_dir, llm, _) = converted();
    let input = "one\ntwo\nthree\nfour\nfive\nsix\n";
    let args = [
        "chat",
        "-m",
        &llm,
        "--temp",
        "0",
        "-n",
        "8",
        "-c",
        "64",
        "--system",
        "Be brief.",
        "-v",
    ];
    let o = llava_stdin(&args, input);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let t = turns(&err);
    assert_eq!(t.len(), 6, "{err}");
    assert!(
        err.contains("the context is full: dropped the 1 oldest turn(s) (the system prompt stays)"),
        "{err}"
    );
    assert!(t.iter().all(|&(_, _, used)| used <= 64), "{t:?}");
    assert_eq!(stdout(&o).lines().count(), 6);
    // A message that cannot fit at all is refused, and the chat goes on.
    let long = format!("{}\nshort\n", "word ".repeat(200));
    let o = llava_stdin(&args, &long);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the context holds 64"),
        "{}",
        stderr(&o)
    );
    assert_eq!(turns(&stderr(&o)).len(), 1);
}

#[test]
fn commands_refuse_bad_arguments_in_one_line_and_the_chat_goes_on() {
    let (dir, llm, mmproj) = converted();
    let missing = dir.path().join("missing.png");
    let input = format!(
        "/image\n/image {}\n/frobnicate\n/save\nhi\n/exit\nnever asked\n",
        missing.display()
    );
    let o = llava_stdin(
        &[
            "chat", "-m", &llm, "--mmproj", &mmproj, "--temp", "0", "-n", "4", "-v",
        ],
        &input,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    for want in [
        "/image needs a file",
        "missing.png",
        "unknown command /frobnicate",
        "/save needs a file",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // "hi" was answered; /exit ended the chat before the last line.
    assert_eq!(turns(&err).len(), 1, "{err}");
}

/// Ctrl-C in a real terminal: `llava chat` on a pseudo-terminal of its own (so the line editor
/// runs, and the terminal turns Ctrl-C into SIGINT). An answer of thousands of tokens is stopped
/// by Ctrl-C and the prompt comes back; /exit then ends the chat with status 0. Keys are typed
/// one at a time, as a person types (the line editor reads a burst of bytes differently).
#[test]
fn ctrl_c_in_a_terminal_stops_the_answer_and_the_chat_goes_on() {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let (_dir, llm, _) = converted();
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors; the null pointers ask for the default
    // settings, a cooked terminal (ISIG on: ^C is SIGINT).
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        // Said past the harness's capture, so a green run without ptys is not mistaken for one
        // that ran this test.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "ctrl_c_in_a_terminal: skipped: no pseudo-terminal ({})",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: both descriptors were just opened and are owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = Command::new(llava_bin());
    cmd.args([
        "chat",
        "-m",
        &llm,
        "--temp",
        "0",
        "-n",
        "8000",
        "--ignore-eos",
        "--template",
        "raw",
        "-c",
        "8192",
        "--ctx-beyond-training",
        "-v",
    ])
    .stdin(Stdio::from(slave.try_clone().unwrap()))
    .stdout(Stdio::from(slave.try_clone().unwrap()))
    .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe; they make the terminal the child's
    // controlling terminal, so its ^C reaches the child as SIGINT.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut keyboard = File::from(master.try_clone().unwrap());
    let mut screen = File::from(master);
    let output = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&output);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with an error (EIO) once the child has closed the terminal.
        while let Ok(n) = screen.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().unwrap().push_str(&text);
        }
    });
    let wait_for = |what: &str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !output.lock().unwrap().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{what:?} did not appear: {}",
                output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut type_in = |text: &[u8]| {
        for &key in text {
            keyboard.write_all(&[key]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("> ", 60);
    type_in(b"Tell a long story\r");
    // Let the answer start, then Ctrl-C.
    std::thread::sleep(Duration::from_millis(300));
    type_in(&[3]);
    wait_for("answer stopped", 30);
    wait_for("turn 1:", 10);
    type_in(b"/exit\r");
    let status = child.wait().unwrap();
    let out = output.lock().unwrap().clone();
    assert!(status.success(), "{status:?}: {out}");
    // Stopped well before its 8000 tokens.
    let at = out.find("generation: ").unwrap() + "generation: ".len();
    let generated: usize = out[at..].split(' ').next().unwrap().parse().unwrap();
    assert!(generated < 4000, "{generated} tokens");
}

/// A piped line longer than any context holds (`< /dev/zero` has no line end at all) is
/// refused with a one-line error once 16 MiB are read, as `run` refuses such a prompt,
/// instead of growing without bound.
#[test]
fn a_line_longer_than_16_mib_on_stdin_is_refused() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (_dir, llm, _mmproj) = converted();
    let mut child = Command::new(llava_bin())
        .args(["chat", "-m", &llm, "-n", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The child stops reading at the limit: the rest of the write may fail with a broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&vec![b'a'; 17 << 20]);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("stdin: a line longer than 16 MiB"), "{err}");
}
