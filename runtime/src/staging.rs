//! Files being written: each under a hidden temporary name beside its final path
//! (`.NAME.XXXXXX.partial`), renamed into place only when complete, so an error, a panic or a
//! killed process never leaves a partial file at the final path.
//!
//! Every staged file in the process is listed here, so that a signal handler can remove them
//! ([`remove_staged_files`]): without it, Ctrl-C during a 7B quantize leaves gigabytes of
//! hidden `.partial` files that pile up. Creating, committing and removing all take one lock,
//! and the removal keeps it until the process exits, so no file is staged or renamed into
//! place after the handler has run.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tempfile::NamedTempFile;

/// The temporary paths of every staged file not yet committed or dropped.
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn staged() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while the list was held leaves it consistent (each change is one push/remove).
    STAGED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A file written under a temporary name in its destination's directory. Dropping it without
/// [`StagedFile::commit`] removes the temporary file.
#[derive(Debug)]
pub struct StagedFile {
    /// Taken only by the commit, which consumes the `StagedFile`.
    tmp: Option<NamedTempFile>,
    path: PathBuf,
}

impl StagedFile {
    /// Creates the temporary file for `path` (which is not touched until the commit). Its
    /// permissions are the usual ones, 0666 less the umask, not a temporary file's 0600.
    pub fn create(path: &Path) -> io::Result<StagedFile> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{file_name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".partial");
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let mut list = staged();
        let tmp = builder.tempfile_in(dir)?;
        list.push(tmp.path().to_owned());
        Ok(StagedFile {
            tmp: Some(tmp),
            path: path.to_owned(),
        })
    }

    /// The open temporary file, to write to.
    pub fn file(&self) -> &File {
        self.named().as_file()
    }

    /// The temporary file's path (hidden, beside the final path).
    pub fn temp_path(&self) -> &Path {
        self.named().path()
    }

    fn named(&self) -> &NamedTempFile {
        self.tmp
            .as_ref()
            .expect("only a commit takes the file, consuming self")
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file into place.
    pub fn commit(self) -> io::Result<()> {
        commit_all(vec![self])
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            // Delisted and deleted under the lock: a signal handler never sees a file gone
            // from the list but still on disk.
            let mut list = staged();
            let path = tmp.path().to_owned();
            list.retain(|p| *p != path);
            drop(tmp);
        }
    }
}

/// Renames every file into place, one after the other under one lock, so a signal handler
/// cannot run between two renames: the outputs of one command (an LLM and its mmproj) are
/// replaced together. A rename failing (all files are complete by then, so not for lack of
/// space) stops there: the files before it are in place, the rest are removed.
pub fn commit_all(files: Vec<StagedFile>) -> io::Result<()> {
    let mut list = staged();
    let mut result = Ok(());
    let mut not_committed = Vec::new();
    for mut file in files {
        if result.is_err() {
            not_committed.push(file);
            continue;
        }
        let named = file.tmp.take().expect("a StagedFile is committed once");
        let tmp = named.path().to_owned();
        list.retain(|p| *p != tmp);
        // On an error the NamedTempFile in the error removes the file when dropped.
        if let Err(e) = named.persist(&file.path) {
            result = Err(e.error);
        }
    }
    // Their Drop takes the lock: release it first.
    drop(list);
    drop(not_committed);
    result
}

/// Removes every staged file and keeps the list locked until the process ends: for a handler
/// of SIGINT, SIGTERM or SIGHUP that exits right after. Returns how many were removed.
pub fn remove_staged_files() -> usize {
    let mut list = staged();
    let mut removed = 0;
    for path in list.drain(..) {
        if std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    // The process is about to exit; keeping the lock stops any other thread from staging a
    // new file or committing one meanwhile.
    std::mem::forget(list);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn is_staged(p: &Path) -> bool {
        staged().iter().any(|s| s == p)
    }

    #[test]
    fn a_staged_file_appears_only_when_committed_and_leaves_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let staged = StagedFile::create(&path).unwrap();
        let tmp = staged.temp_path().to_owned();
        assert!(tmp
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(".out.gguf."));
        assert!(is_staged(&tmp));
        staged.file().write_all(b"data").unwrap();
        assert!(!path.exists());
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        assert!(!tmp.exists());
        assert!(!is_staged(&tmp));
    }

    #[test]
    fn a_dropped_staged_file_is_removed_and_the_final_path_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keep.gguf");
        std::fs::write(&path, b"old").unwrap();
        let staged = StagedFile::create(&path).unwrap();
        let tmp = staged.temp_path().to_owned();
        staged.file().write_all(b"new").unwrap();
        drop(staged);
        assert!(!tmp.exists());
        assert!(!is_staged(&tmp));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn a_failed_commit_removes_what_it_did_not_rename_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory cannot be replaced by a rename.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        let other = dir.path().join("other");
        let files = vec![
            StagedFile::create(&blocked).unwrap(),
            StagedFile::create(&other).unwrap(),
        ];
        let temps: Vec<PathBuf> = files.iter().map(|f| f.temp_path().to_owned()).collect();
        assert!(commit_all(files).is_err());
        assert!(!other.exists());
        for t in &temps {
            assert!(!t.exists(), "{}", t.display());
            assert!(!is_staged(t));
        }
    }

    #[test]
    fn commit_all_replaces_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let files: Vec<StagedFile> = [&a, &b]
            .iter()
            .map(|p| {
                let s = StagedFile::create(p).unwrap();
                s.file().write_all(p.to_str().unwrap().as_bytes()).unwrap();
                s
            })
            .collect();
        commit_all(files).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), a.to_str().unwrap());
        assert_eq!(std::fs::read_to_string(&b).unwrap(), b.to_str().unwrap());
    }
}
