//! Files of local state (`outbox.json`, `pins.json`, `uploads.json`,
//! `history.jsonl`) shared by every process of one user: `inbox --follow`
//! and `classic` may run for hours while a `send` comes and goes.
//!
//! Each change is a read-modify-write under an advisory lock (`flock`
//! through [`std::fs::File::lock`]) on a lock file beside the data file:
//! the file is read again under the lock, changed, written to a temporary
//! file with a name no other writer uses, and renamed over the old one.
//! Readers need no lock: a rename replaces the whole file at once, so they
//! see the old or the new content, never a mix.
//!
//! Design decision: the lock is a separate file because the data file is
//! replaced by every write, and a lock on a replaced file guards nothing.
//! Locks are held only for one read and one write, so taking one blocks
//! the calling thread for milliseconds at most.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// An exclusive lock on one data file; released when dropped (closing the
/// lock file releases it, even if the process dies).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: std::fs::File,
}

/// The lock file that guards `path`: `.NAME.lock` beside it.
fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lock"))
}

/// Takes the exclusive lock that guards `path`, waiting for other
/// processes (and other handles in this one) to release it.
///
/// # Errors
/// When the lock file cannot be created or locked.
pub(crate) fn lock(path: &Path) -> Result<Lock> {
    let lp = lock_path(path);
    let ctx = || format!("cannot lock {}", path.display());
    let file = open_private(&lp, OpenMode::Keep).map_err(|e| Error::io(ctx(), e))?;
    file.lock().map_err(|e| Error::io(ctx(), e))?;
    Ok(Lock { _file: file })
}

/// Reads the JSON file at `path`; the default value when it does not exist.
///
/// # Errors
/// When it exists but cannot be read or parsed.
pub(crate) fn read_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::io(
                format!("cannot parse {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// Changes the JSON file at `path` under its lock: reads the current
/// content (not a copy read earlier, which another process may have
/// replaced since), applies `change`, writes it back atomically. Returns
/// the new content and what `change` returned.
///
/// # Errors
/// When the file cannot be locked, read, parsed or written; nothing is
/// written then.
pub(crate) fn update_json<T, R>(path: &Path, change: impl FnOnce(&mut T) -> R) -> Result<(T, R)>
where
    T: Serialize + DeserializeOwned + Default,
{
    let _lock = lock(path)?;
    let mut value: T = read_json(path)?;
    let r = change(&mut value);
    let json = serde_json::to_vec(&value).map_err(|e| {
        Error::io(
            format!("cannot write {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    write_atomic(path, &json)?;
    Ok((value, r))
}

/// Temporary files made by this process so far, for unique names.
static TEMP: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a temporary file of its own
/// (named for this process and a counter, created exclusively), fsync,
/// rename. Two writers never share a temporary file, so neither can
/// rename the other's half-written one into place.
///
/// # Errors
/// When any step fails; the temporary file is removed then.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let ctx = || format!("cannot write {}", path.display());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (tmp, mut f) = loop {
        let n = TEMP.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match open_private(&tmp, OpenMode::New) {
            Ok(f) => break (tmp, f),
            // Left by a process that died and had the same pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(ctx(), e)),
        }
    };
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(ctx(), e));
    }
    Ok(())
}

/// How [`open_private`] opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Create if missing, keep the content (lock files).
    Keep,
    /// Create if missing, append (history).
    Append,
    /// Create, failing if it exists (temporary files).
    New,
}

/// Opens a file readable only by its owner (mode 0600 on Unix).
pub(crate) fn open_private(path: &Path, mode: OpenMode) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    match mode {
        OpenMode::Keep => o.create(true).truncate(false),
        OpenMode::Append => o.create(true).append(true),
        OpenMode::New => o.create_new(true),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_updates_from_separate_handles_lose_nothing() {
        // Separate opens of the lock file exclude each other exactly as
        // separate processes do (flock locks belong to the open file).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.json");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        update_json(&path, |v: &mut Vec<u32>| v.push(t * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all: Vec<u32> = read_json(&path).unwrap();
        all.sort_unstable();
        let want: Vec<u32> = (0..4)
            .flat_map(|t| (0..25).map(move |i| t * 100 + i))
            .collect();
        assert_eq!(all, want);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_failed_write_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"[1]").unwrap();
        // A folder where the file should go: the rename fails.
        let blocked = dir.path().join("sub");
        std::fs::create_dir_all(blocked.join("y.json")).unwrap();
        std::fs::write(blocked.join("y.json").join("keep"), b"").unwrap();
        assert!(write_atomic(&blocked.join("y.json"), b"[2]").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"[1]");
        assert_eq!(
            std::fs::read_dir(&blocked).unwrap().count(),
            1,
            "no temp left"
        );
    }
}
