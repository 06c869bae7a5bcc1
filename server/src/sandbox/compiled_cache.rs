//! The compiled-module cache: Cranelift's output kept in the state directory,
//! so a restart does not compile a guest it has compiled before.
//!
//! An entry is keyed by the module's digest and the engine's compatibility
//! hash (wasmtime version, target and every setting that changes code), in
//! `<state-dir>/compiled/<module digest>-<engine key>.cwasm`. Loading
//! compiled code skips validation, so an entry is never trusted blindly:
//! its SHA-256 was recorded in the state store when it was written, and a
//! file that no longer matches (damaged, truncated, replaced) or that
//! wasmtime refuses is logged, ignored and rebuilt.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use hadr_state::{blobs, StateStore};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where a component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a checked cache entry.
    Hit,
    /// Compiled; no entry existed.
    Miss,
    /// Compiled; the entry was unusable for the given reason.
    Rebuilt(String),
    /// Compiled; no cache is configured.
    Uncached,
}

/// Compiled components on disk, checked against the state store.
pub struct CompiledCache {
    dir: PathBuf,
    store: Arc<StateStore>,
    engine_key: String,
}

impl CompiledCache {
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: PathBuf, store: Arc<StateStore>, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            store,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// The component for `bytes` (whose digest is `digest`): from the cache
    /// when a checked entry exists, else compiled and cached.
    pub fn component(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let key = format!("{digest}-{}", self.engine_key);
        let path = self.dir.join(format!("{key}.cwasm"));
        let outcome = match self.load(engine, &key, &path) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => CacheOutcome::Miss,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "ignoring a compiled-cache entry; recompiling");
                CacheOutcome::Rebuilt(reason)
            }
        };
        let component = Component::from_binary(engine, bytes)?;
        if let Err(e) = self.save(&component, &key, &path) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the compiled module");
        }
        Ok((component, outcome))
    }

    /// Removes what an interrupted write left (`.tmp` files) and every entry
    /// for a module not in `keep` or for another engine build. Returns how
    /// many files were removed.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let stale = name.strip_suffix(".cwasm").is_some_and(|key| {
                let ours = key.split_once('-').is_some_and(|(digest, engine)| {
                    engine == self.engine_key && keep.contains(digest)
                });
                !ours
            });
            if name.ends_with(".tmp") || stale {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A checked entry, `None` if there is none, or why it is unusable.
    fn load(
        &self,
        engine: &Engine,
        key: &str,
        path: &PathBuf,
    ) -> Result<Option<Component>, String> {
        let expected = self
            .store
            .compiled_checksum(key)
            .map_err(|e| e.to_string())?;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && expected.is_none() => {
                return Ok(None)
            }
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let Some(expected) = expected else {
            return Err("no checksum was recorded for it".into());
        };
        let actual = blobs::digest(&bytes);
        if actual != expected {
            return Err(format!("its checksum is {actual}, {expected} was recorded"));
        }
        // SAFETY: these bytes are exactly what `Component::serialize` wrote
        // for this engine configuration (checked against the checksum
        // recorded when they were written); wasmtime checks the header's
        // version and settings again.
        unsafe { Component::deserialize(engine, &bytes) }
            .map(Some)
            .map_err(|e| format!("wasmtime refused it: {e:#}"))
    }

    fn save(&self, component: &Component, key: &str, path: &PathBuf) -> Result<(), String> {
        let bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        let record = || -> Result<(), hadr_state::StateError> {
            self.store
                .put_compiled_checksum(key, &blobs::digest(&bytes))?;
            self.store.flush()
        };
        record().map_err(|e| e.to_string())
    }
}
