//! Content-addressed files: guest modules and models, named by their SHA-256.
//!
//! Deployments refer to their module and model by digest, so a restart can
//! serve exactly what was deployed even after the original files changed or
//! vanished. A blob is written to a temporary name, synced, then renamed, so
//! a crash never leaves a half-written blob under its final name; and it is
//! checked against its digest on every read, so a damaged one is reported,
//! never served.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file system refused.
    #[error("blob store {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes on disk no longer match their name.
    #[error("blob {path} is damaged: its content's digest is {actual}")]
    Damaged {
        /// The blob file.
        path: PathBuf,
        /// The digest of what is there now.
        actual: String,
    },
    /// The digest asked for is not a hex SHA-256.
    #[error("`{0}` is not a hex SHA-256 digest")]
    BadDigest(String),
}

/// A directory of blobs named by the hex SHA-256 of their content.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// Lower-case hex SHA-256 of `bytes`: how hadr names modules, models and
/// compiled artifacts everywhere.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Maps an I/O error on `path` to [`BlobError::Io`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
    let path = path.to_owned();
    move |source| BlobError::Io { path, source }
}

impl BlobStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Stores `bytes` durably; returns their digest. Storing the same bytes
    /// twice is a no-op.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let digest = digest(bytes);
        // An intact copy is kept; a damaged one is replaced.
        if matches!(self.get(&digest), Ok(Some(_))) {
            return Ok(digest);
        }
        let path = self.dir.join(&digest);
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // A name of its own per writer: two uploads of the same bytes at
        // once never share a half-written file.
        static WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{digest}.{}.{n}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(digest)
    }

    /// The bytes stored under `digest`, checked; `None` if there are none.
    pub fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(digest)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobError::Io { path, source }),
        };
        let actual = self::digest(&bytes);
        if actual != digest {
            return Err(BlobError::Damaged { path, actual });
        }
        Ok(Some(bytes))
    }

    /// Removes what an interrupted write left (`.tmp` files) and every blob
    /// whose digest is not in `keep`; other files are left alone. Returns how
    /// many files were removed.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) -> Result<usize, BlobError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry.map_err(io(&self.dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let unused = self.path(name).is_ok() && !keep.contains(name);
            if name.ends_with(".tmp") || unused {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Where `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid || digest.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BlobError::BadDigest(digest.to_string()));
        }
        Ok(self.dir.join(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_damage_is_caught() {
        let dir = std::env::temp_dir().join(format!("hadr-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::new(&dir);
        let d = store.put(b"guest bytes").unwrap();
        assert_eq!(d, digest(b"guest bytes"));
        assert_eq!(store.put(b"guest bytes").unwrap(), d);
        assert_eq!(store.get(&d).unwrap().as_deref(), Some(&b"guest bytes"[..]));
        assert_eq!(store.get(&digest(b"other")).unwrap(), None);
        std::fs::write(dir.join(&d), b"tampered").unwrap();
        let err = store.get(&d).unwrap_err().to_string();
        assert!(err.contains("is damaged"), "{err}");
        // Uploading the bytes again repairs it.
        assert_eq!(store.put(b"guest bytes").unwrap(), d);
        assert_eq!(store.get(&d).unwrap().as_deref(), Some(&b"guest bytes"[..]));
        assert!(matches!(
            store.get("../../etc/passwd"),
            Err(BlobError::BadDigest(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retain_removes_leftovers_and_unused_blobs_only() {
        let dir = std::env::temp_dir().join(format!("hadr-blobs-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::new(&dir);
        let kept = store.put(b"kept").unwrap();
        let unused = store.put(b"unused").unwrap();
        std::fs::write(dir.join(format!(".{unused}.7.0.tmp")), b"half").unwrap();
        std::fs::write(dir.join("README"), b"not a blob").unwrap();
        let keep = std::collections::HashSet::from([kept.clone()]);
        assert_eq!(store.retain(&keep).unwrap(), 2);
        assert_eq!(store.get(&kept).unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(store.get(&unused).unwrap(), None);
        assert!(dir.join("README").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
