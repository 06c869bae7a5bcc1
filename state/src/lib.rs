//! # hadr-state
//!
//! hadr's persistent runtime state, in sled: what must survive a `kill -9`.
//!
//! The store is a set of typed trees over one sled database:
//! - `meta`: the schema version, checked on open so an old binary never
//!   misreads a newer layout;
//! - `instances`: one [`InstanceRecord`] per topology instance (its role and
//!   counters), keyed by name.
//!
//! Values are JSON, so an operator can inspect them with any sled tool and a
//! field added later reads as its default from an older record.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const META: &str = "meta";
const INSTANCES: &str = "instances";
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Why the state store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled could not open or write the directory.
    #[error("state directory {path}: {source} (move it aside or pass another --state-dir to start fresh)")]
    Storage {
        /// The state directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A record could not be decoded.
    #[error("state directory {path}: record `{key}` in `{tree}` is unreadable: {message}")]
    Corrupt {
        /// The state directory.
        path: PathBuf,
        /// The tree.
        tree: &'static str,
        /// The key.
        key: String,
        /// The decoder's explanation.
        message: String,
    },
    /// The directory was written by a newer hadr.
    #[error("state directory {path} has schema version {found}; this hadr reads version {SCHEMA_VERSION}")]
    Schema {
        /// The state directory.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// An instance's persisted facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceRecord {
    /// `active`, `standby` or `promoted`.
    pub role: String,
    /// Predictions answered.
    pub served: u64,
    /// Failed calls.
    pub failed: u64,
    /// Traps.
    pub traps: u64,
}

/// The open state database.
pub struct StateStore {
    path: PathBuf,
    db: sled::Db,
    instances: sled::Tree,
}

impl StateStore {
    /// Opens (or creates) the state directory and checks its schema version.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let storage = |source| StateError::Storage {
            path: path.to_owned(),
            source,
        };
        let db = sled::open(path).map_err(storage)?;
        let meta = db.open_tree(META).map_err(storage)?;
        let instances = db.open_tree(INSTANCES).map_err(storage)?;
        let store = Self {
            path: path.to_owned(),
            db,
            instances,
        };
        match meta.get(SCHEMA_KEY).map_err(storage)? {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(storage)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found != SCHEMA_VERSION {
                    return Err(StateError::Schema {
                        path: path.to_owned(),
                        found,
                    });
                }
            }
        }
        Ok(store)
    }

    /// The record of `instance`, if one was saved.
    pub fn instance(&self, instance: &str) -> Result<Option<InstanceRecord>, StateError> {
        self.get(&self.instances, INSTANCES, instance)
    }

    /// Saves `instance`'s record (buffered; see [`StateStore::flush`]).
    pub fn put_instance(&self, instance: &str, record: &InstanceRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(record).expect("a record serialises");
        self.instances
            .insert(instance.as_bytes(), bytes)
            .map_err(|source| self.storage(source))?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map_err(|source| self.storage(source))?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &str,
    ) -> Result<Option<T>, StateError> {
        let Some(bytes) = tree.get(key.as_bytes()).map_err(|s| self.storage(s))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                tree: name,
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    fn storage(&self, source: sled::Error) -> StateError {
        StateError::Storage {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hadr-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_survive_reopening() {
        let dir = temp("reopen");
        let record = InstanceRecord {
            role: "promoted".into(),
            served: 42,
            failed: 1,
            traps: 1,
        };
        {
            let store = StateStore::open(&dir).unwrap();
            assert_eq!(store.instance("predict3").unwrap(), None);
            store.put_instance("predict3", &record).unwrap();
            store.flush().unwrap();
        }
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.instance("predict3").unwrap(), Some(record));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_way_out() {
        let dir = temp("schema");
        {
            let db = sled::open(&dir).unwrap();
            db.open_tree(META)
                .unwrap()
                .insert(SCHEMA_KEY, &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = StateStore::open(&dir).err().unwrap().to_string();
        assert!(err.contains("schema version 99"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_record_is_reported_not_panicked() {
        let dir = temp("corrupt");
        let store = StateStore::open(&dir).unwrap();
        store
            .instances
            .insert(b"predict1", &b"{not json"[..])
            .unwrap();
        let err = store.instance("predict1").unwrap_err().to_string();
        assert!(
            err.contains("record `predict1` in `instances` is unreadable"),
            "{err}"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
