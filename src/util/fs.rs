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
pub fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
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
    fn atomic_write_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("results.csv");
        write_atomic(&p, b"a").unwrap();
        write_atomic(&p, b"b").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
