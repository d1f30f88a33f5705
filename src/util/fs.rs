//! Replacing files and folders so that a crash at any moment leaves the old version or the new
//! one, never half of one and never neither. Every atomic write in sweep goes through here.

use std::io;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that readers see the old file or the new one, never half of one,
/// and the new one is on disk (synced) before it replaces the old.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, true)
}

/// As [`write_atomic`] for a process crash (readers see the old file or the new one), without
/// waiting for the disk: for files derived from a synced one and written again before every
/// use (a program trial's parameter files, from its config.json), where a power loss can cost
/// nothing the next start does not rewrite, and a millisecond a file is worth keeping.
///
/// An empty file at `path` (one [`make_ahead`] made) has no old version to keep: it is written
/// in place, so the write creates no file. Likewise the temporary file, when `make_ahead` made
/// it: creating a file is the slow part of a small write on some file systems.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        return std::fs::write(path, bytes);
    }
    replace_file(path, bytes, false)
}

/// Creates, empty, what a later write of `path` will fill, so that the write creates no file:
/// `path` itself when `replaced` is false (a file nothing reads before it is written, or one
/// only appended to), else the temporary file [`write_replacing`] puts in its place (a file
/// whose existence means something, as a trial's result.json). What exists is left as it is.
pub fn make_ahead(path: &Path, replaced: bool) -> io::Result<()> {
    let path = if replaced {
        tmp_path(path)
    } else {
        path.to_path_buf()
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
}

/// Where [`replace_file`] writes before the rename: `result.json` -> `result.json.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ))
}

fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = tmp_path(path);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)
}

/// `dir` with `.suffix` appended to its last component (`best` -> `best.tmp`).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// An empty folder beside `dir` (`dir.tmp`) to assemble its next version in; a leftover from an
/// earlier crash is removed first.
pub fn staging_dir(dir: &Path) -> io::Result<PathBuf> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    Ok(tmp)
}

/// Puts the folder assembled in `staged` at `dir`. The old `dir` is renamed to `dir.old` first,
/// then `staged` into place, then `dir.old` is deleted: a crash between the renames leaves the
/// previous version in `dir.old` (see `completed_dir`), never no folder at all.
pub fn replace_dir(staged: &Path, dir: &Path) -> io::Result<()> {
    let old = sibling(dir, "old");
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(staged, dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The last complete version of a folder written with `replace_dir` in which `marker` exists:
/// `dir` itself, or `dir.old` when a crash fell between the two renames.
pub fn completed_dir(dir: &Path, marker: &str) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "old")]
        .into_iter()
        .find(|d| d.join(marker).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_folder_keeps_one_complete_version_at_every_step() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("best");
        let first = staging_dir(&dir).unwrap();
        std::fs::write(first.join("done"), "1").unwrap();
        replace_dir(&first, &dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("done")).unwrap(), "1");
        assert!(!root.path().join("best.tmp").exists());

        // A crash after the first rename of the next replacement: only best.old exists.
        let second = staging_dir(&dir).unwrap();
        std::fs::write(second.join("done"), "2").unwrap();
        std::fs::rename(&dir, root.path().join("best.old")).unwrap();
        let found = completed_dir(&dir, "done").unwrap();
        assert_eq!(std::fs::read_to_string(found.join("done")).unwrap(), "1");
        // The next replacement still succeeds and cleans up.
        replace_dir(&second, &dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("done")).unwrap(), "2");
        assert!(!root.path().join("best.old").exists());
        assert_eq!(completed_dir(&dir, "done"), Some(dir.clone()));
        assert_eq!(completed_dir(&root.path().join("none"), "done"), None);
    }

    #[test]
    fn files_made_ahead_are_filled_without_creating_a_file() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        // Written in place: the same file, now full.
        let params = root.path().join("params.json");
        make_ahead(&params, false).unwrap();
        let made = inode(&params);
        write_replacing(&params, b"{}").unwrap();
        assert_eq!(
            (inode(&params), std::fs::read(&params).unwrap()),
            (made, b"{}".to_vec())
        );
        // Written again: replaced, as before (the old version is not empty).
        write_replacing(&params, b"{\"x\": 1}").unwrap();
        assert_ne!(inode(&params), made);
        // A file whose existence means something: only its temporary file is made ahead.
        let result = root.path().join("result.json");
        make_ahead(&result, true).unwrap();
        assert!(!result.exists());
        let made = inode(&root.path().join("result.json.tmp"));
        write_replacing(&result, b"{\"end\": 1}").unwrap();
        assert_eq!(inode(&result), made);
        assert!(!root.path().join("result.json.tmp").exists());
        // What exists is left as it is.
        make_ahead(&params, false).unwrap();
        assert_eq!(std::fs::read(&params).unwrap(), b"{\"x\": 1}");
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("results.csv");
        write_atomic(&p, b"a").unwrap();
        write_atomic(&p, b"b").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
