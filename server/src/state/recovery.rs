//! Recovery: where the topology file and the saved state meet at start.
//!
//! The topology file is the **desired shape**: which instances exist, which
//! are active and which standby, their ports and thresholds, what they
//! serve. The state directory holds **runtime facts**: that a standby was
//! promoted, how much each instance served and failed, its last fault, when
//! its deployment came into force. On start each instance takes its shape
//! from the file and its facts from the state, by these rules:
//!
//! | file says | state says | result |
//! |---|---|---|
//! | standby | promoted | stays **promoted** (a fact about a standby) |
//! | active | promoted | active: the file made it active for good |
//! | standby | active | **standby**: the file wins (conflict, logged) |
//! | active | standby | **active**: the file wins (conflict, logged) |
//! | any | counters, last fault | continued from the saved values |
//! | module/model A | B, put in force by `hadr-host deploy` | **B** (said at start) |
//! | module/model A | B, from an earlier topology file | the file's A (conflict, logged) |
//! | (absent) | a record | the record is dropped (logged) |
//!
//! The deployment before the one in force is restored too, for `rollback`.
//!
//! Each conflict is logged as a warning naming the instance, both sides and
//! what wins, so an operator reading the start-up log knows what happened.
//! A changed shape (instances, roles, ports, thresholds) bumps the
//! topology generation.

use hadr_state::{
    DeploymentRecord, Event, EventKind, InstanceRecord, Role as Saved, Source, TopologyMark,
};
use sha2::{Digest, Sha256};

use crate::instance::Role;
use crate::topology::{InstanceSpec, Topology};

/// How one instance comes back.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The role it starts in.
    pub role: Role,
    /// The saved facts it continues from (all zero for a new instance).
    pub saved: InstanceRecord,
    /// What the file and the state disagreed on, and what won.
    pub conflicts: Vec<String>,
    /// The deployment a `hadr-host deploy` put in force, which wins over the
    /// file's; `None` to serve the file's.
    pub deployed: Option<DeploymentRecord>,
    /// The deployment before it, for rollback.
    pub previous: Option<DeploymentRecord>,
}

/// Decides how `spec` starts, given what was saved of it and the version the
/// file gives it now.
pub fn reconcile(spec: &InstanceSpec, version: &str, saved: Option<&InstanceRecord>) -> Restored {
    let file_role = if spec.active {
        Role::Active
    } else {
        Role::Standby
    };
    let Some(saved) = saved else {
        return Restored {
            role: file_role,
            saved: InstanceRecord::default(),
            conflicts: Vec::new(),
            deployed: None,
            previous: None,
        };
    };
    let mut conflicts = Vec::new();
    let role = match (file_role, saved.role) {
        (Role::Standby, Saved::Promoted) => Role::Promoted,
        (Role::Standby, Saved::Active) => {
            conflicts.push(format!(
                "instance `{}` was active, the topology file makes it a standby: the file wins",
                spec.name
            ));
            Role::Standby
        }
        (Role::Active, Saved::Standby) => {
            conflicts.push(format!(
                "instance `{}` was a standby, the topology file makes it active: the file wins",
                spec.name
            ));
            Role::Active
        }
        (role, _) => role,
    };
    let deployed = saved
        .deployment
        .clone()
        .filter(|d| d.source == Source::Deploy);
    if let Some(was) = saved
        .deployment
        .as_ref()
        .filter(|d| d.source != Source::Deploy && d.version != version)
    {
        conflicts.push(format!(
            "instance `{}` served version {} (model {}), the topology file now gives version {version}: the file wins",
            spec.name, was.version, was.model
        ));
    }
    Restored {
        role,
        saved: saved.clone(),
        conflicts,
        deployed,
        previous: saved.previous.clone(),
    }
}

/// The topology mark to save: the same generation for the same shape, the
/// next one for a changed shape (or the first run).
pub fn next_mark(topology: &Topology, saved: Option<&TopologyMark>) -> TopologyMark {
    let digest = shape_digest(topology);
    match saved {
        Some(mark) if mark.digest == digest => mark.clone(),
        Some(mark) => TopologyMark {
            digest,
            generation: mark.generation + 1,
        },
        None => TopologyMark {
            digest,
            generation: 1,
        },
    }
}

/// The event that closes a canary the last run left open (its last rollout
/// event started one): a canary lives in memory only, so a restart ends it
/// (its instances serve their version in force), and without this event the
/// log's last word would still be the canary. `at` is now.
pub fn canary_ended_by_restart(events: &[Event], at: String) -> Option<Event> {
    let last = events.last()?;
    (last.kind == EventKind::Canary).then(|| Event {
        at,
        kind: EventKind::Abort,
        detail: format!(
            "ended by a restart (a canary is not kept across restarts; its instances serve their version in force): {}",
            last.detail
        ),
    })
}

/// Names, roles, ports and thresholds, in file order: what the file shapes.
fn shape_digest(topology: &Topology) -> String {
    let mut hasher = Sha256::new();
    for spec in &topology.instances {
        let line = format!(
            "{}\t{}\t{:?}\t{}\n",
            spec.name, spec.active, spec.port, spec.max_load
        );
        hasher.update(line.as_bytes());
    }
    hadr_state::blobs::hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hadr_state::DeploymentRecord;
    use std::path::PathBuf;

    #[test]
    fn only_a_canary_left_open_is_ended_by_a_restart() {
        let event = |kind| Event {
            at: "t".into(),
            kind,
            detail: "v2 at 10%".into(),
        };
        let now = || "now".to_string();
        assert_eq!(canary_ended_by_restart(&[], now()), None);
        let open =
            canary_ended_by_restart(&[event(EventKind::Deploy), event(EventKind::Canary)], now())
                .expect("a canary was open");
        assert_eq!((open.kind, open.at.as_str()), (EventKind::Abort, "now"));
        assert!(open.detail.contains("ended by a restart") && open.detail.ends_with("v2 at 10%"));
        for closed in [
            EventKind::Deploy,
            EventKind::Promote,
            EventKind::Abort,
            EventKind::AutoAbort,
            EventKind::Rollback,
        ] {
            let events = [event(EventKind::Canary), event(closed)];
            assert_eq!(canary_ended_by_restart(&events, now()), None, "{closed:?}");
        }
    }

    fn spec(name: &str, active: bool) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            active,
            port: None,
            host: None,
            max_load: 10,
            concurrency: None,
            batch: None,
            model: PathBuf::from("m.onnx"),
            module: PathBuf::from("g.wasm"),
        }
    }

    fn saved(role: Saved, version: &str) -> InstanceRecord {
        InstanceRecord {
            role,
            served: 12,
            deployment: Some(DeploymentRecord {
                version: version.into(),
                model: "digits".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_instance_starts_as_the_file_says_with_zero_counters() {
        let r = reconcile(&spec("p3", false), "v1", None);
        assert_eq!(r.role, Role::Standby);
        assert_eq!(r.saved.served, 0);
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn a_promoted_standby_stays_promoted_and_keeps_its_counters() {
        let r = reconcile(
            &spec("p3", false),
            "v1",
            Some(&saved(Saved::Promoted, "v1")),
        );
        assert_eq!(r.role, Role::Promoted);
        assert_eq!(r.saved.served, 12);
        assert!(r.conflicts.is_empty());
    }

    #[test]
    fn the_file_wins_on_active_versus_standby_and_says_so() {
        let r = reconcile(&spec("p1", false), "v1", Some(&saved(Saved::Active, "v1")));
        assert_eq!(r.role, Role::Standby);
        assert!(
            r.conflicts[0].contains("`p1` was active"),
            "{:?}",
            r.conflicts
        );
        let r = reconcile(&spec("p3", true), "v1", Some(&saved(Saved::Standby, "v1")));
        assert_eq!(r.role, Role::Active);
        assert!(r.conflicts[0].contains("the file wins"));
        let r = reconcile(&spec("p3", true), "v1", Some(&saved(Saved::Promoted, "v1")));
        assert_eq!((r.role, r.conflicts.len()), (Role::Active, 0));
    }

    #[test]
    fn a_changed_deployment_is_a_conflict_the_file_wins() {
        let r = reconcile(&spec("p1", true), "v2", Some(&saved(Saved::Active, "v1")));
        assert_eq!(r.role, Role::Active);
        assert!(
            r.conflicts[0].contains("served version v1") && r.conflicts[0].contains("v2"),
            "{:?}",
            r.conflicts
        );
    }

    #[test]
    fn a_deployed_version_wins_over_the_file_without_a_conflict() {
        let mut record = saved(Saved::Active, "v9");
        record.deployment.as_mut().unwrap().source = Source::Deploy;
        record.previous = saved(Saved::Active, "v1").deployment;
        let r = reconcile(&spec("p1", true), "v1", Some(&record));
        assert_eq!(r.deployed.map(|d| d.version), Some("v9".into()));
        assert_eq!(r.previous.map(|d| d.version), Some("v1".into()));
        assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
        let r = reconcile(&spec("p1", true), "v1", Some(&saved(Saved::Active, "v9")));
        assert_eq!(r.deployed, None);
    }

    #[test]
    fn the_generation_moves_only_when_the_shape_changes() {
        let topology = |active| Topology {
            path: PathBuf::from("t.json"),
            instances: vec![spec("p1", true), spec("p3", active)],
        };
        let first = next_mark(&topology(false), None);
        assert_eq!(first.generation, 1);
        assert_eq!(next_mark(&topology(false), Some(&first)), first);
        let changed = next_mark(&topology(true), Some(&first));
        assert_eq!(changed.generation, 2);
        assert_ne!(changed.digest, first.digest);
    }
}
