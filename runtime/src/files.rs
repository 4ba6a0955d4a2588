//! What kind of file a path names, checked before it is opened: opening a FIFO for reading
//! blocks until a writer comes, a directory maps as "No such device", and a device such as
//! /dev/zero reads forever. Inputs and outputs must be regular files.

use std::fs::{FileType, Metadata};
use std::io;
use std::path::Path;

/// "a directory", "a FIFO", ... for a file that is not a regular file; `None` for one that is.
pub fn non_regular_kind(ty: FileType) -> Option<&'static str> {
    if ty.is_file() {
        return None;
    }
    if ty.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ty.is_fifo() {
            return Some("a FIFO");
        }
        if ty.is_char_device() {
            return Some("a character device");
        }
        if ty.is_block_device() {
            return Some("a block device");
        }
        if ty.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// The metadata of `path` (symbolic links followed) if it is a regular file; otherwise an
/// error of kind `InvalidInput` saying what it is ("is a FIFO, not a regular file"). Does not
/// open the file, so a FIFO never blocks.
pub fn regular_file(path: &Path) -> io::Result<Metadata> {
    let meta = std::fs::metadata(path)?;
    match non_regular_kind(meta.file_type()) {
        None => Ok(meta),
        Some(kind) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {kind}, not a regular file"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_devices_are_refused_without_opening_them() {
        let dir = tempfile::tempdir().unwrap();
        let e = regular_file(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "is a directory, not a regular file");
        #[cfg(unix)]
        {
            let e = regular_file(Path::new("/dev/null")).unwrap_err();
            assert_eq!(e.to_string(), "is a character device, not a regular file");
            let fifo = dir.path().join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(made.unwrap().success());
            // Returns at once: a FIFO without a writer is never opened.
            let e = regular_file(&fifo).unwrap_err();
            assert_eq!(e.to_string(), "is a FIFO, not a regular file");
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(regular_file(&file).unwrap().len(), 1);
    }
}
