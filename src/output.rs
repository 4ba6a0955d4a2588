//! The files a command writes, checked before any work: every output is a regular file or a
//! new path, none is an input of the command (compared by file identity, not by path text),
//! no two outputs are one file, and an existing file is replaced only with `--force`. Every
//! writing command goes through [`check_outputs`], so all refuse alike, with one message.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llava_runtime::files::non_regular_kind;
use llava_runtime::staging::{self, StagedFile};

/// An output of a command: the flag that names it (for messages) and its path.
pub struct Output<'a> {
    pub flag: &'static str,
    pub path: &'a Path,
}

impl<'a> Output<'a> {
    /// The outputs of a model writer (`convert`, `synth`): the LLM (`-o`) and, when there is
    /// one, the mmproj (`--mmproj-out`).
    pub fn llm_and_mmproj(llm: &'a Path, mmproj: Option<&'a Path>) -> Vec<Output<'a>> {
        let llm = Output {
            flag: "-o",
            path: llm,
        };
        let mmproj = mmproj.map(|path| Output {
            flag: "--mmproj-out",
            path,
        });
        std::iter::once(llm).chain(mmproj).collect()
    }
}

/// Refuses, before anything is read or written, outputs that would destroy a file or each
/// other. `inputs` are the files and directories the command reads: an output may not be one
/// of them nor a file directly inside an input directory (a checkpoint's shards), even with
/// `force`.
pub fn check_outputs(outputs: &[Output], inputs: &[&Path], force: bool) -> Result<()> {
    let input_files = identities_of(inputs);
    for (i, out) in outputs.iter().enumerate() {
        let path = out.path;
        if path.as_os_str() == "-" {
            bail!(
                "{}: writing to stdout is not supported here; give a file path",
                out.flag
            );
        }
        match std::fs::metadata(path) {
            Ok(meta) => {
                if let Some(kind) = non_regular_kind(meta.file_type()) {
                    bail!(
                        "{}: is {kind}, not a regular file; {} must name a file",
                        path.display(),
                        out.flag
                    );
                }
                if let Some(input) = input_files
                    .iter()
                    .find(|(_, id)| *id == identity(path, &meta))
                {
                    bail!(
                        "{}: is {} (an input of this command); write to another path",
                        path.display(),
                        describe_same(path, &input.0)
                    );
                }
                if !force {
                    bail!(
                        "{}: already exists (use --force to replace it)",
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("{}: {e}", path.display()),
        }
        for other in &outputs[..i] {
            if same_destination(other.path, path) {
                bail!(
                    "{} and {} name the same file ({}): each output needs its own path",
                    other.flag,
                    out.flag,
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Creates the directory `path` will be written in, if missing.
pub fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    }
    Ok(())
}

/// A temporary file beside `path` for a library writer to write to (it writes through a
/// temporary file of its own and renames it onto this one); [`commit`] puts it in place.
pub fn stage(path: &Path) -> Result<StagedFile> {
    StagedFile::create(path)
        .with_context(|| format!("{}: cannot create a file beside it", path.display()))
}

/// Renames the staged outputs into place, together.
pub fn commit(files: Vec<StagedFile>) -> Result<()> {
    let names: Vec<String> = files
        .iter()
        .map(|f| f.path().display().to_string())
        .collect();
    staging::commit_all(files)
        .with_context(|| format!("cannot put {} in place", names.join(" and ")))
}

/// Writes `path`'s new contents to a staged temporary file beside it, for [`commit`].
pub fn write_staged(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<StagedFile> {
    let ctx = || format!("cannot write {}", path.display());
    let staged = stage(path)?;
    let mut w = std::io::BufWriter::new(staged.file());
    write(&mut w).with_context(ctx)?;
    std::io::Write::flush(&mut w).with_context(ctx)?;
    drop(w);
    staged.file().sync_all().with_context(ctx)?;
    Ok(staged)
}

/// On SIGINT, SIGTERM or SIGHUP: removes every staged (partial) output, then ends the process
/// as the signal would have. The final paths are never touched before a commit, so what is
/// left is the user's old files, untouched, and no hidden `.partial` files. A signal the
/// process was started with ignored (`nohup`, a background job's SIGINT) stays ignored.
///
/// The handler stays for the rest of the process unless [`SignalCleanup::close`] removes it:
/// a command that goes on after its output (`chat --hf` converting a checkpoint first) must,
/// or Ctrl-C ends the process instead of reaching the command's own handler.
pub fn remove_partial_files_on_signals() -> SignalCleanup {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let handled: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
            .into_iter()
            .filter(|&s| !is_ignored(s))
            .collect();
        let Ok(mut signals) = signal_hook::iterator::Signals::new(&handled) else {
            return SignalCleanup { handler: None };
        };
        let handle = signals.handle();
        let thread = std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                staging::remove_staged_files();
                // Back to the default action, raised again: the parent sees the signal.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                // Only if that failed.
                std::process::exit(128 + signal);
            }
        });
        SignalCleanup {
            handler: Some((handle, thread)),
        }
    }
    #[cfg(not(unix))]
    SignalCleanup {}
}

/// The handler of [`remove_partial_files_on_signals`]. Dropping it leaves the handler in place.
pub struct SignalCleanup {
    #[cfg(unix)]
    handler: Option<(signal_hook::iterator::Handle, std::thread::JoinHandle<()>)>,
}

impl SignalCleanup {
    /// Removes the handler: once this returns, the signals reach the process's other handlers
    /// (or their default action) as before it was installed.
    pub fn close(self) {
        #[cfg(unix)]
        if let Some((handle, thread)) = self.handler {
            handle.close();
            // The thread's `Signals` unregisters its actions when dropped, as the thread ends;
            // the last of them goes with `handle`, at the end of this block.
            let _ = thread.join();
        }
    }
}

/// Whether `signal`'s disposition is "ignore" (inherited from the parent: `nohup` sets it for
/// SIGHUP, shells for a background job's SIGINT).
#[cfg(unix)]
fn is_ignored(signal: i32) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current one into `old`, a
    // zeroed (valid) sigaction.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

fn describe_same(output: &Path, input: &Path) -> String {
    if output == input {
        "the input file".to_owned()
    } else {
        format!("the same file as {}", input.display())
    }
}

/// (path, identity) of each input file, and of each regular file directly inside an input
/// directory. Files that cannot be read are skipped: the command's own open reports them.
fn identities_of(inputs: &[&Path]) -> Vec<(PathBuf, FileIdentity)> {
    let mut ids = Vec::new();
    for &input in inputs {
        let Ok(meta) = std::fs::metadata(input) else {
            continue;
        };
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(input) else {
                continue;
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if let Ok(m) = std::fs::metadata(&p) {
                    if m.is_file() {
                        ids.push((p.clone(), identity(&p, &m)));
                    }
                }
            }
        } else {
            ids.push((input.to_owned(), identity(input, &meta)));
        }
    }
    ids
}

/// Device and inode on Unix: two paths are one file whatever links or `..` lead to it.
#[cfg(unix)]
type FileIdentity = (u64, u64);

#[cfg(unix)]
fn identity(_path: &Path, meta: &std::fs::Metadata) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
type FileIdentity = Option<PathBuf>;

#[cfg(not(unix))]
fn identity(path: &Path, _meta: &std::fs::Metadata) -> FileIdentity {
    path.canonicalize().ok()
}

/// Whether two output paths (which may not exist yet) end up as one file: their directories
/// resolved, then the names compared.
fn same_destination(a: &Path, b: &Path) -> bool {
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return identity(a, &ma) == identity(b, &mb);
    }
    let resolve = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = dir
            .canonicalize()
            .unwrap_or_else(|_| std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()));
        (dir, p.file_name().map(|n| n.to_owned()))
    };
    resolve(a) == resolve(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(path: &Path) -> Output<'_> {
        Output { flag: "-o", path }
    }

    #[test]
    fn an_existing_file_needs_force_and_a_device_or_directory_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.gguf");
        check_outputs(&[out(&file)], &[], false).unwrap();
        std::fs::write(&file, b"x").unwrap();
        let e = check_outputs(&[out(&file)], &[], false).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("already exists (use --force to replace it)"));
        check_outputs(&[out(&file)], &[], true).unwrap();
        let e = check_outputs(&[out(dir.path())], &[], true).unwrap_err();
        assert!(
            e.to_string().contains("is a directory, not a regular file"),
            "{e}"
        );
        #[cfg(unix)]
        {
            let e = check_outputs(&[out(Path::new("/dev/null"))], &[], true).unwrap_err();
            assert!(e.to_string().contains("is a character device"), "{e}");
        }
    }

    #[test]
    fn an_input_is_never_an_output_even_through_another_path() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        std::fs::create_dir(&ckpt).unwrap();
        let shard = ckpt.join("model.safetensors");
        std::fs::write(&shard, b"weights").unwrap();
        // The shard by an indirect path: still the same file.
        let indirect = ckpt.join("..").join("ckpt").join("model.safetensors");
        let e = check_outputs(&[out(&indirect)], &[&ckpt], true).unwrap_err();
        assert!(e.to_string().contains("an input of this command"), "{e}");
        #[cfg(unix)]
        {
            let link = dir.path().join("hard.gguf");
            std::fs::hard_link(&shard, &link).unwrap();
            let e = check_outputs(&[out(&link)], &[&shard], true).unwrap_err();
            assert!(e.to_string().contains("the same file as"), "{e}");
        }
        // A new file in the checkpoint directory is fine.
        check_outputs(&[out(&ckpt.join("new.gguf"))], &[&ckpt], false).unwrap();
    }

    #[test]
    fn two_outputs_on_one_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.gguf");
        let a2 = dir.path().join(".").join("a.gguf");
        let outputs = [
            Output {
                flag: "-o",
                path: &a,
            },
            Output {
                flag: "--mmproj-out",
                path: &a2,
            },
        ];
        let e = check_outputs(&outputs, &[], true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("-o and --mmproj-out name the same file"),
            "{e}"
        );
        let b = dir.path().join("b.gguf");
        check_outputs(&[out(&a), out(&b)], &[], true).unwrap();
    }
}
