//! One run per output folder: `OUT/.lock`, held with an OS file lock for the run's
//! life. The operating system releases the lock when the process ends in any way
//! (`kill -9` included), so a crashed run never leaves the folder locked; the file
//! itself stays, holding the last holder's description for the refusal message.

use anyhow::{bail, Context};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The lock file's name inside the output folder.
pub const LOCK: &str = ".lock";

/// Holds the folder's lock until dropped.
pub struct RunLock {
    _file: File,
}

/// Makes `out` (and its parents) and locks it for this process, or says which run
/// holds it. `command` describes this run for a later refusal.
pub fn acquire(out: &Path, command: &str) -> anyhow::Result<RunLock> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating the output folder {}", out.display()))?;
    let path = out.join(LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = Vec::new();
            // Bounded: the file is ours and short, but a user can put anything there.
            let _ = (&file).take(4096).read_to_end(&mut holder);
            let holder = String::from_utf8_lossy(&holder);
            let holder = holder.trim();
            bail!(
                "{} is in use by another run ({}); wait for it to end or stop it, or choose another --out",
                out.display(),
                if holder.is_empty() { "its description is not written yet" } else { holder }
            );
        }
        // A filesystem without locks (some network mounts): run unprotected, and say so.
        Err(TryLockError::Error(e)) => {
            eprintln!(
                "warning: cannot lock {} ({e}); nothing stops a second run from writing to the same folder",
                path.display()
            );
            return Ok(RunLock { _file: file });
        }
    }
    let description = format!("process {}: {command}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(description.as_bytes()))
        .with_context(|| format!("writing the lock file {}", path.display()))?;
    remove_stale_temporaries(out);
    Ok(RunLock { _file: file })
}

/// Removes the temporary files an atomic write leaves when its process is killed
/// mid-write (`.latest.safetensors.<pid>.tmp`): under the lock no other run writes
/// here, so every such file is stale.
fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(inner) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .filter(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            .map(|(file, _)| file)
        else {
            continue;
        };
        let ours = crate::trainer::RUN_FILES.contains(&inner)
            || (inner.starts_with("epoch-") && inner.ends_with(".safetensors"));
        if ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
