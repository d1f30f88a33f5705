//! One `sweep run` per results folder: an OS file lock, released by the OS however the process
//! ends (no stale lock after a crash or kill -9).

use std::fs::File;
use std::path::Path;

/// The folder is held by another `sweep run`, or its lock file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another `sweep run` (pid {holder}); wait for it, or stop it first"
    )]
    Held { dir: String, holder: String },
    #[error("locking {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Holds the results folder while alive.
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(".lock");
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(LockError::Held {
                    dir: dir.display().to_string(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        std::fs::write(&path, std::process::id().to_string()).map_err(io)?;
        Ok(Self { _file: file })
    }
}
