//! What a data file's path says: its role from its name (train, dev, test), and what to say when
//! a path names nothing or a folder, listing what is there instead (the seed's naming mistakes).

use std::path::{Path, PathBuf};

/// What a data file is for, judged by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Train,
    Dev,
    Test,
    Unknown,
}

/// A file's role from its name: `train*`, `dev*`/`valid*`/`val*`/`eval*`, `test*`.
pub fn role_of(path: &Path) -> Role {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_lowercase();
    if stem.contains("train") {
        Role::Train
    } else if stem.contains("dev")
        || stem.contains("valid")
        || stem.starts_with("val")
        || stem.contains("eval")
    {
        Role::Dev
    } else if stem.contains("test") {
        Role::Test
    } else {
        Role::Unknown
    }
}

pub fn shown(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".into()
    } else {
        dir.display().to_string()
    }
}

/// Data files (`.json`, `.jsonl`) in a folder, sorted, at most `limit`.
fn data_files_in(dir: &Path, limit: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .take(1000)
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl")
                )
        })
        .collect();
    out.sort();
    out.truncate(limit);
    out
}

fn names(files: &[PathBuf]) -> String {
    files
        .iter()
        .filter_map(|p| p.file_name().map(|n| format!("`{}`", n.to_string_lossy())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to say when a data file is not found: what is there instead. `field` is `data.train`
/// or `data.dev` when the path comes from a sweep file.
pub fn missing_file_hint(path: &Path, field: Option<&str>) -> Option<String> {
    let parent = path.parent().unwrap_or(Path::new(""));
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| ".".into());
    if !parent.as_os_str().is_empty() && !parent.is_dir() {
        return Some(format!(
            "the folder `{}` does not exist either; relative paths are taken from the directory sweep runs in ({cwd})",
            parent.display()
        ));
    }
    let there = data_files_in(parent, 8);
    let wanted = match field {
        Some("data.dev") => Some(Role::Dev),
        Some("data.train") => Some(Role::Train),
        _ => role_of(path).into_known(),
    };
    if wanted == Some(Role::Dev) {
        if let Some(test) = there
            .iter()
            .find(|p| matches!(role_of(p), Role::Test | Role::Dev))
        {
            return Some(format!(
                "found `{}` there: sweep's held-out set is dev; point {} at it, or rename it to dev.json (the seed's platform wanted train.json and dev.json side by side)",
                test.display(),
                field.unwrap_or("data.dev")
            ));
        }
    }
    if let Some(role) = wanted {
        if let Some(same) = there.iter().find(|p| role_of(p) == role) {
            return Some(format!(
                "found `{}` there; did you mean it?",
                same.display()
            ));
        }
    }
    // The two-folders mistake: the file sits in a sibling folder.
    if let (Some(name), Some(grand)) = (path.file_name(), parent.parent()) {
        let grand = if grand.as_os_str().is_empty() {
            Path::new(".")
        } else {
            grand
        };
        if let Ok(entries) = std::fs::read_dir(grand) {
            for entry in entries.take(200).flatten() {
                let candidate = entry.path().join(name);
                if entry.path() != parent && candidate.is_file() {
                    return Some(format!(
                        "found `{}` in another folder; point the path at it, or keep train and dev files side by side in one folder",
                        candidate.display()
                    ));
                }
            }
        }
    }
    if there.is_empty() {
        Some(format!(
            "relative paths are taken from the directory sweep runs in ({cwd})"
        ))
    } else {
        Some(format!("data files there: {}", names(&there)))
    }
}

impl Role {
    fn into_known(self) -> Option<Role> {
        match self {
            Role::Test => Some(Role::Dev),
            Role::Unknown => None,
            r => Some(r),
        }
    }
}

/// What to say when a folder is given where a data file is expected (the seed's two folders).
pub fn folder_hint(dir: &Path) -> Option<String> {
    let files = data_files_in(dir, 8);
    let first = files.first()?;
    Some(format!(
        "it holds {}; give the file itself, e.g. `{}`",
        names(&files),
        first.display()
    ))
}
