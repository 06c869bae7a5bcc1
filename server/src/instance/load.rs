//! What the router reads of an instance: its role and its load (requests
//! in flight or waiting on it, the article's `load`), both atomics so that
//! a routing decision takes no lock.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use serde::Serialize;

/// What an instance does in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Role {
    /// Takes routed traffic (the article's `"status": true`).
    Active = 0,
    /// Waits to be promoted (`"status": false`).
    Standby = 1,
    /// A standby that was promoted: now takes routed traffic.
    Promoted = 2,
}

impl Role {
    /// Decodes the value stored in an atomic; unknown values read as standby.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Role::Active,
            2 => Role::Promoted,
            _ => Role::Standby,
        }
    }

    /// Its name, as serialised (`active`, `standby`, `promoted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Promoted => "promoted",
        }
    }

    /// Whether the router sends it traffic.
    pub fn serves(self) -> bool {
        matches!(self, Role::Active | Role::Promoted)
    }
}

/// The state store's record of a role.
impl From<Role> for hadr_state::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::Active => hadr_state::Role::Active,
            Role::Standby => hadr_state::Role::Standby,
            Role::Promoted => hadr_state::Role::Promoted,
        }
    }
}

/// An instance's role and load.
#[derive(Debug)]
pub(super) struct Load {
    /// The [`Role`], as its `u8`.
    role: AtomicU8,
    /// Requests in flight or waiting.
    load: AtomicUsize,
}

impl Load {
    pub(super) fn new(role: Role) -> Self {
        Self {
            role: AtomicU8::new(role as u8),
            load: AtomicUsize::new(0),
        }
    }

    pub(super) fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    pub(super) fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
    }

    /// Moves the role from `from` to `to`; `true` if this call did it.
    pub(super) fn change_role(&self, from: Role, to: Role) -> bool {
        self.role
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(super) fn load(&self) -> usize {
        self.load.load(Ordering::Acquire)
    }

    /// Counts one more request if the load is under `max`.
    pub(super) fn try_claim(&self, max: usize) -> bool {
        self.load
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < max).then_some(l + 1)
            })
            .is_ok()
    }

    /// Counts one more call whatever the threshold: a call that goes on
    /// after its request went away (see `Handover`).
    pub(super) fn add(&self) {
        self.load.fetch_add(1, Ordering::AcqRel);
    }

    /// A claimed request is done.
    pub(super) fn release(&self) {
        self.load.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stop_at_the_threshold_and_releases_return_to_zero() {
        let load = Load::new(Role::Active);
        assert!((0..3).all(|_| load.try_claim(3)));
        assert!(!load.try_claim(3));
        (0..3).for_each(|_| load.release());
        assert_eq!(load.load(), 0);
    }

    #[test]
    fn a_roles_name_is_its_serialised_form() {
        for role in [Role::Active, Role::Standby, Role::Promoted] {
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
    }

    #[test]
    fn a_role_changes_only_from_the_expected_one() {
        let load = Load::new(Role::Standby);
        assert!(!load.change_role(Role::Promoted, Role::Standby));
        assert!(load.change_role(Role::Standby, Role::Promoted));
        assert!(!load.change_role(Role::Standby, Role::Promoted));
        assert_eq!(load.role(), Role::Promoted);
    }
}
