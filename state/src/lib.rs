//! # hadr-state
//!
//! hadr's persistent runtime state, in sled: what must survive a `kill -9`.
//!
//! The store is a set of typed trees over one sled database:
//! - `meta`: the schema version, checked on open so an old binary never
//!   misreads a newer layout, and the [`TopologyMark`] (which topology shape
//!   the state belongs to, and its generation);
//! - `instances`: one [`InstanceRecord`] per topology instance (its role,
//!   counters, last fault, the deployment it serves and the one before),
//!   keyed by name;
//! - `events`: what operators did and what the host decided for them
//!   (deploys, promotions, aborted canaries, rollbacks), in order;
//! - `compiled`: the checksum of each cached compiled module, so a damaged
//!   cache file is never loaded.
//!
//! Module and model bytes live beside the database as content-addressed
//! files ([`blobs`]).
//!
//! Values are JSON, so an operator can inspect them with any sled tool and a
//! field added later reads as its default from an older record.
//!
//! Writes are buffered by sled; only [`StateStore::flush`] makes them
//! durable. The host batches per-request counters into a flush every few
//! hundred milliseconds and flushes at once for changes an operator acts on.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub mod blobs;
pub use blobs::{BlobError, BlobStore};

/// The layout this build reads and writes. Version 1 kept roles, statuses,
/// sources and event kinds as free strings; version 2 keeps them as the
/// enums below, and a version-1 directory is migrated when opened.
pub const SCHEMA_VERSION: u32 = 2;

const META: &str = "meta";
const INSTANCES: &str = "instances";
const EVENTS: &str = "events";
const COMPILED: &str = "compiled";
const SCHEMA_KEY: &[u8] = b"schema_version";
const TOPOLOGY_KEY: &str = "topology";

/// Why the state store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled could not open or write the directory.
    #[error("state directory {path}: {message} (if another hadr-host uses it, stop that one; otherwise move the directory aside or pass another --state-dir to start fresh)")]
    Storage {
        /// The state directory.
        path: PathBuf,
        /// sled's error, or the panic it raised on a damaged file.
        message: String,
    },
    /// A record could not be decoded.
    #[error("state directory {path}: record `{key}` in `{tree}` is unreadable: {message} (move the directory aside or pass another --state-dir to start fresh)")]
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
    #[error("state directory {path} has schema version {found}; this hadr reads version {SCHEMA_VERSION} (use the hadr that wrote it, or pass another --state-dir)")]
    Schema {
        /// The state directory.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// What an instance does in the topology.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes routed traffic.
    #[default]
    Active,
    /// Waits to be promoted.
    Standby,
    /// A standby that was promoted.
    Promoted,
}

/// Where a deployment in force came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The topology file (and the defaults).
    #[default]
    Topology,
    /// `hadr-host deploy`.
    Deploy,
}

impl Source {
    /// Its name, as serialised (`topology`, `deploy`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Topology => "topology",
            Source::Deploy => "deploy",
        }
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A new version put in force.
    Deploy,
    /// A canary started.
    Canary,
    /// A canary put in force for all its instances.
    Promote,
    /// A canary dropped by an operator, or ended by a restart (a canary is
    /// not kept across restarts; the event's detail says which).
    Abort,
    /// A canary dropped by the host for its error rate.
    AutoAbort,
    /// Instances returned to their previous deployment.
    Rollback,
}

/// A fault as it was last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What happened.
    pub error: String,
    /// When, in RFC 3339 (UTC).
    pub at: String,
}

/// The deployment an instance serves: which guest module and which model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeploymentRecord {
    /// Hex SHA-256 of the guest module.
    pub module_digest: String,
    /// Hex SHA-256 of the model file.
    pub model_digest: String,
    /// The model's name.
    pub model: String,
    /// The version shown in answers.
    pub version: String,
    /// Where it came from.
    pub source: Source,
    /// When it came into force, in RFC 3339 (UTC).
    pub since: String,
    /// Hex SHA-256 of the request its smoke test and `GET /predict` send,
    /// which a deploy keeps in the blob store, so a restart keeps it (the
    /// record, rewritten with every counter flush, holds only its digest);
    /// `None` in records saved before examples were kept.
    pub example_digest: Option<String>,
}

/// An instance's persisted facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceRecord {
    /// Its role.
    pub role: Role,
    /// Whether it had no working sandbox (its last fault could not be
    /// repaired).
    pub broken: bool,
    /// Predictions answered.
    pub served: u64,
    /// Failed calls.
    pub failed: u64,
    /// Traps (including deadlines).
    pub traps: u64,
    /// Faulted sandboxes replaced.
    pub respawns: u64,
    /// Times it was promoted from standby.
    pub promotions: u64,
    /// The most recent fault.
    pub last_fault: Option<FaultRecord>,
    /// The deployment in force.
    pub deployment: Option<DeploymentRecord>,
    /// The deployment before it, kept for `rollback`.
    pub previous: Option<DeploymentRecord>,
}

/// Something operators did, or the host did on their behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When, in RFC 3339 (UTC).
    pub at: String,
    /// What happened.
    pub kind: EventKind,
    /// A sentence for the operator.
    pub detail: String,
}

/// Which topology the state belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopologyMark {
    /// A digest of the topology's shape (names, roles, ports, thresholds).
    pub digest: String,
    /// Bumped each time the host starts on a different shape.
    pub generation: u64,
}

/// The open state database.
pub struct StateStore {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    instances: sled::Tree,
    events: sled::Tree,
    compiled: sled::Tree,
}

impl StateStore {
    /// Opens (or creates) the state directory and checks its schema version.
    /// A damaged directory is an error, never a panic.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        // sled 0.34 panics on some damaged files instead of returning an
        // error; turn that into the same clear error.
        match std::panic::catch_unwind(|| Self::open_inner(path)) {
            Ok(result) => result,
            Err(panic) => Err(StateError::Storage {
                path: path.to_owned(),
                message: format!(
                    "the database is damaged ({})",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("sled panicked")
                ),
            }),
        }
    }

    fn open_inner(path: &Path) -> Result<Self, StateError> {
        let storage = |source: sled::Error| StateError::Storage {
            path: path.to_owned(),
            message: source.to_string(),
        };
        let db = sled::open(path).map_err(storage)?;
        let meta = db.open_tree(META).map_err(storage)?;
        let instances = db.open_tree(INSTANCES).map_err(storage)?;
        let events = db.open_tree(EVENTS).map_err(storage)?;
        let compiled = db.open_tree(COMPILED).map_err(storage)?;
        let store = Self {
            path: path.to_owned(),
            db,
            meta,
            instances,
            events,
            compiled,
        };
        match store.meta.get(SCHEMA_KEY).map_err(storage)? {
            None => {
                store
                    .meta
                    .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(storage)?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                match found {
                    SCHEMA_VERSION => {}
                    1 => store.migrate_from_v1()?,
                    _ => {
                        return Err(StateError::Schema {
                            path: path.to_owned(),
                            found,
                        })
                    }
                }
            }
        }
        Ok(store)
    }

    /// Rewrites a version-1 directory's records in version 2: role, status,
    /// source and event kind strings become enums (a status of `failed`
    /// becomes `broken`). A string version 1 never wrote is reported as a
    /// damaged record. Durable before the new version is recorded, so a
    /// crash half-way migrates again.
    fn migrate_from_v1(&self) -> Result<(), StateError> {
        for entry in self.instances.iter() {
            let (key, bytes) = entry.map_err(|s| self.storage(s))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let record = self
                .v1_instance(&bytes)
                .map_err(|message| StateError::Corrupt {
                    path: self.path.clone(),
                    tree: INSTANCES,
                    key: name.clone(),
                    message: format!("migrating from schema 1: {message}"),
                })?;
            self.put_instance(&name, &record)?;
        }
        for entry in self.events.iter() {
            let (key, bytes) = entry.map_err(|s| self.storage(s))?;
            // Version 1's kinds are version 2's names; only the type changed.
            let event: Event = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                tree: EVENTS,
                key: format!("{key:?}"),
                message: format!("migrating from schema 1: {e}"),
            })?;
            let bytes = serde_json::to_vec(&event).expect("an event serialises");
            self.events
                .insert(key, bytes)
                .map_err(|s| self.storage(s))?;
        }
        self.flush()?;
        self.meta
            .insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
            .map_err(|s| self.storage(s))?;
        self.flush()
    }

    /// A version-1 instance record read into version 2.
    fn v1_instance(&self, bytes: &[u8]) -> Result<InstanceRecord, String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let object = value.as_object_mut().ok_or("not a JSON object")?;
        // A record an interrupted migration already rewrote has no status.
        if let Some(status) = object.remove("status") {
            let broken = status.as_str() == Some("failed");
            object.insert("broken".into(), broken.into());
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// The directory it lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of `instance`, if one was saved.
    pub fn instance(&self, instance: &str) -> Result<Option<InstanceRecord>, StateError> {
        self.get(&self.instances, INSTANCES, instance)
    }

    /// Every saved instance record, by name.
    pub fn instances(&self) -> Result<Vec<(String, InstanceRecord)>, StateError> {
        let mut out = Vec::new();
        for entry in self.instances.iter() {
            let (key, _) = entry.map_err(|s| self.storage(s))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            if let Some(record) = self.instance(&name)? {
                out.push((name, record));
            }
        }
        Ok(out)
    }

    /// Saves `instance`'s record (buffered; see [`StateStore::flush`]).
    pub fn put_instance(&self, instance: &str, record: &InstanceRecord) -> Result<(), StateError> {
        self.put(&self.instances, instance, record)
    }

    /// Forgets `instance`'s record (buffered).
    pub fn remove_instance(&self, instance: &str) -> Result<(), StateError> {
        self.instances
            .remove(instance.as_bytes())
            .map_err(|s| self.storage(s))?;
        Ok(())
    }

    /// The topology the state belongs to, if one was saved.
    pub fn topology(&self) -> Result<Option<TopologyMark>, StateError> {
        self.get(&self.meta, META, TOPOLOGY_KEY)
    }

    /// Saves the topology mark (buffered).
    pub fn put_topology(&self, mark: &TopologyMark) -> Result<(), StateError> {
        self.put(&self.meta, TOPOLOGY_KEY, mark)
    }

    /// Appends an event (buffered).
    pub fn push_event(&self, event: &Event) -> Result<(), StateError> {
        let id = self.db.generate_id().map_err(|s| self.storage(s))?;
        let bytes = serde_json::to_vec(event).expect("an event serialises");
        self.events
            .insert(id.to_be_bytes(), bytes)
            .map_err(|s| self.storage(s))?;
        Ok(())
    }

    /// The last `n` events, oldest first.
    pub fn events(&self, n: usize) -> Result<Vec<Event>, StateError> {
        let mut out = Vec::new();
        for entry in self.events.iter().rev().take(n) {
            let (key, bytes) = entry.map_err(|s| self.storage(s))?;
            let event = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                tree: EVENTS,
                key: format!("{key:?}"),
                message: e.to_string(),
            })?;
            out.push(event);
        }
        out.reverse();
        Ok(out)
    }

    /// The checksum recorded for the compiled artifact `key`, if any.
    pub fn compiled_checksum(&self, key: &str) -> Result<Option<String>, StateError> {
        self.get(&self.compiled, COMPILED, key)
    }

    /// Records the checksum of the compiled artifact `key` (buffered).
    pub fn put_compiled_checksum(&self, key: &str, checksum: &str) -> Result<(), StateError> {
        self.put(&self.compiled, key, &checksum)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map_err(|source| self.storage(source))?;
        Ok(())
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(value).expect("a record serialises");
        tree.insert(key.as_bytes(), bytes)
            .map_err(|source| self.storage(source))?;
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
            message: source.to_string(),
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
    fn a_sources_name_is_its_serialised_form() {
        for source in [Source::Topology, Source::Deploy] {
            assert_eq!(serde_json::to_value(source).unwrap(), source.as_str());
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = temp("reopen");
        let record = InstanceRecord {
            role: Role::Promoted,
            broken: true,
            served: 42,
            failed: 1,
            traps: 1,
            respawns: 1,
            promotions: 1,
            last_fault: Some(FaultRecord {
                error: "trap".into(),
                at: "2026-11-29T00:00:00Z".into(),
            }),
            deployment: Some(DeploymentRecord {
                version: "aaaa-bbbb".into(),
                ..Default::default()
            }),
            previous: None,
        };
        let mark = TopologyMark {
            digest: "abc".into(),
            generation: 3,
        };
        {
            let store = StateStore::open(&dir).unwrap();
            assert_eq!(store.instance("predict3").unwrap(), None);
            assert_eq!(store.topology().unwrap(), None);
            store.put_instance("predict3", &record).unwrap();
            store.put_instance("gone", &record).unwrap();
            store.remove_instance("gone").unwrap();
            store.put_topology(&mark).unwrap();
            store.flush().unwrap();
        }
        let store = when_free(|| StateStore::open(&dir)).unwrap();
        assert_eq!(store.instance("predict3").unwrap(), Some(record.clone()));
        assert_eq!(
            store.instances().unwrap(),
            vec![("predict3".into(), record)]
        );
        assert_eq!(store.topology().unwrap(), Some(mark));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_come_back_in_order_and_checksums_by_key() {
        let dir = temp("events");
        let store = StateStore::open(&dir).unwrap();
        for kind in [EventKind::Deploy, EventKind::Canary, EventKind::AutoAbort] {
            let event = Event {
                at: String::new(),
                kind,
                detail: String::new(),
            };
            store.push_event(&event).unwrap();
        }
        let kinds: Vec<EventKind> = store
            .events(2)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::Canary, EventKind::AutoAbort]);
        assert_eq!(store.compiled_checksum("m:e").unwrap(), None);
        store.put_compiled_checksum("m:e", "abc").unwrap();
        assert_eq!(
            store.compiled_checksum("m:e").unwrap().as_deref(),
            Some("abc")
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_older_record_reads_with_defaults() {
        let dir = temp("older");
        let store = StateStore::open(&dir).unwrap();
        store
            .instances
            .insert(b"predict1", &br#"{"role":"active","served":7}"#[..])
            .unwrap();
        let record = store.instance("predict1").unwrap().unwrap();
        assert_eq!(
            (record.role, record.served, record.respawns, record.broken),
            (Role::Active, 7, 0, false)
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Retries `open` while the directory's previous opener still holds its
    /// lock: sled releases it from a background thread shortly after the
    /// handle is dropped.
    fn when_free<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Err(e)
                    if e.to_string().contains("acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    /// A version-1 directory as an older hadr left it.
    fn v1_directory(dir: &Path, instances: &[(&str, serde_json::Value)], events: &[&str]) {
        let db = sled::open(dir).unwrap();
        db.open_tree(META)
            .unwrap()
            .insert(SCHEMA_KEY, &1u32.to_be_bytes())
            .unwrap();
        let tree = db.open_tree(INSTANCES).unwrap();
        for (name, record) in instances {
            tree.insert(name.as_bytes(), record.to_string().as_bytes())
                .unwrap();
        }
        let tree = db.open_tree(EVENTS).unwrap();
        for (i, kind) in events.iter().enumerate() {
            let event = serde_json::json!({"at": "t", "kind": kind, "detail": "d"});
            tree.insert((i as u64).to_be_bytes(), event.to_string().as_bytes())
                .unwrap();
        }
        db.flush().unwrap();
    }

    #[test]
    fn a_version_1_directory_is_migrated_to_typed_records() {
        let dir = temp("migrate");
        let deployed = serde_json::json!({"version": "a-b", "source": "deploy"});
        v1_directory(
            &dir,
            &[
                (
                    "p1",
                    serde_json::json!({"role": "active", "status": "failed", "served": 7,
                    "deployment": deployed}),
                ),
                (
                    "p3",
                    serde_json::json!({"role": "promoted", "status": "promoted"}),
                ),
            ],
            &["deploy", "auto-abort", "rollback"],
        );
        for _ in 0..2 {
            // Migrated once, then read as version 2.
            let store = when_free(|| StateStore::open(&dir)).unwrap();
            let p1 = store.instance("p1").unwrap().unwrap();
            assert_eq!((p1.role, p1.broken, p1.served), (Role::Active, true, 7));
            assert_eq!(p1.deployment.unwrap().source, Source::Deploy);
            let p3 = store.instance("p3").unwrap().unwrap();
            assert_eq!((p3.role, p3.broken), (Role::Promoted, false));
            let kinds: Vec<_> = store
                .events(10)
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            assert_eq!(
                kinds,
                [EventKind::Deploy, EventKind::AutoAbort, EventKind::Rollback]
            );
            let version = store.meta.get(SCHEMA_KEY).unwrap().unwrap();
            assert_eq!(version.as_ref(), SCHEMA_VERSION.to_be_bytes());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_1_string_no_hadr_wrote_stops_the_migration_naming_it() {
        let dir = temp("migrate-bad");
        v1_directory(&dir, &[("p2", serde_json::json!({"role": "leader"}))], &[]);
        let err = when_free(|| StateStore::open(&dir))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`p2`") && err.contains("migrating from schema 1"),
            "{err}"
        );
        assert!(err.contains("leader"), "{err}");
        // Nothing was half-migrated: the directory still says version 1.
        let db = when_free(|| sled::open(&dir)).unwrap();
        let version = db
            .open_tree(META)
            .unwrap()
            .get(SCHEMA_KEY)
            .unwrap()
            .unwrap();
        assert_eq!(version.as_ref(), 1u32.to_be_bytes());
        drop(db);
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
        let err = when_free(|| StateStore::open(&dir))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
        assert!(err.contains("another --state-dir"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let dir = temp("locked");
        let first = StateStore::open(&dir).unwrap();
        let err = StateStore::open(&dir).err().unwrap().to_string();
        assert!(err.contains("another hadr-host"), "{err}");
        drop(first);
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

    #[test]
    fn a_garbage_database_is_an_error_not_a_panic() {
        let dir = temp("garbage");
        {
            let store = StateStore::open(&dir).unwrap();
            store
                .put_instance("predict1", &InstanceRecord::default())
                .unwrap();
            store.flush().unwrap();
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, vec![0xA5u8; 4096]).unwrap();
            }
        }
        let outcome = when_free(|| StateStore::open(&dir)).and_then(|s| s.instance("predict1"));
        let err = outcome
            .expect_err("a damaged database is refused")
            .to_string();
        assert!(err.contains("state directory"), "{err}");
        assert!(err.contains("move the directory aside"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
