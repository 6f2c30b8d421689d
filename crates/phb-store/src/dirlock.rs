//! One writer per data directory.
//!
//! Two servers on one directory each believe they own the log: both
//! acknowledge the same sequence to different events and, after a restart,
//! only one of them is in the file (issue 6, defect 1). sled's own lock does
//! not prevent this — it only makes the second opener's index fail, which
//! used to be read as "damaged, rebuild it". So the whole directory is
//! locked, before anything in it is read or written, with an exclusive
//! `flock` on `D/lock` held for as long as the `DataDirLock` lives.
//!
//! `flock` locks belong to the open file description: the kernel drops the
//! lock when the process exits however it exits (`kill -9` included), so a
//! crash never leaves a stale lock behind. The PID written into the file is
//! only there so that a refused start can say who holds the directory; the
//! lock itself is the `flock`, never the file's existence or contents.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "data directory {} is in use by another process ({}, holding {}); only one server may use a data directory at a time: stop that process first, or use another data directory",
        dir.display(),
        pid.map(|p| format!("PID {p}")).unwrap_or_else(|| "PID unknown".into()),
        lock_file.display()
    )]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// The holder's PID as it wrote it into the lock file, if readable.
        pid: Option<u32>,
    },
    /// Creating, opening or locking failed for another reason (read-only
    /// storage, permissions, a filesystem without `flock`).
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    // Kept open: closing the last descriptor of this open file description
    // is what releases the lock.
    file: File,
    dir: PathBuf,
    lock_file: PathBuf,
}

impl DataDirLock {
    /// Locks `dir` for this process, creating it (mode 0700) if it does not
    /// exist, and writes this process's PID into the lock file. Fails at
    /// once, without waiting, if another process holds it.
    ///
    /// The lock is per open file description, not per process: acquiring
    /// the same directory twice in one process fails too, so take it once
    /// and pass it on (see `phb_engine::Engine::open_locked`).
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { what, path, source }
        };
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating", dir))?;
            // The new directory's entry must survive a crash with the log in it.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing", parent))?;
        }
        let lock_file = dir.join(LOCK_FILE);
        // O_NOFOLLOW: a symlink planted at D/lock must not make us create
        // or truncate a file elsewhere.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_file)
            .map_err(io("opening the lock file", &lock_file))?;
        // SAFETY: flock(2) on a descriptor we own for the duration of the
        // call; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&file),
                    lock_file,
                });
            }
            return Err(LockError::Io {
                what: "locking",
                path: lock_file,
                source: err,
            });
        }
        // Not fsync'd: the PID only names the holder while it runs, and the
        // lock does not outlive the process.
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(io("writing the PID into", &lock_file))?;
        Ok(DataDirLock {
            file,
            dir: dir.to_path_buf(),
            lock_file,
        })
    }

    /// The locked data directory, as given to `acquire`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file.
    pub fn lock_file(&self) -> &Path {
        &self.lock_file
    }

    /// True if `dir` names the directory this lock holds (the same inode,
    /// however the path is spelled).
    pub fn covers(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(held), Ok(other)) = (self.file.metadata(), dir.join(LOCK_FILE).metadata()) else {
            return false;
        };
        held.dev() == other.dev() && held.ino() == other.ino()
    }
}

/// The PID the holder wrote, if the file holds one (it can be empty for
/// the moment between the holder's `flock` and its write).
fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// True if sled failed to open because another process (or another open
/// of the same directory) holds its database lock. Such an index is in use,
/// not damaged: it must be a hard error, never a reason to delete and
/// rebuild it.
pub fn is_lock_conflict(e: &sled::Error) -> bool {
    let sled::Error::Io(io) = e else {
        return false;
    };
    // sled 0.34 wraps fs2's EWOULDBLOCK in an `Other` error with this text
    // (sled/src/config.rs `try_lock`), so the kind alone is not enough.
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_and_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let held = DataDirLock::acquire(&dir).unwrap();
        assert!(held.covers(&dir));
        match DataDirLock::acquire(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        DataDirLock::acquire(&dir).unwrap();
    }

    #[test]
    fn files_and_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("data");
        let lock = DataDirLock::acquire(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir) & 0o077, 0);
        assert_eq!(mode(lock.lock_file()) & 0o077, 0);
    }

    #[test]
    fn sled_lock_conflicts_are_recognised() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("index");
        let _db = sled::Config::new().path(&path).open().unwrap();
        let second = sled::Config::new().path(&path).open();
        match second {
            Err(e) => assert!(is_lock_conflict(&e), "{e:?}"),
            Ok(_) => panic!("sled opened a locked database twice"),
        }
        let other = sled::Error::Io(std::io::Error::other("disk on fire"));
        assert!(!is_lock_conflict(&other));
    }
}
