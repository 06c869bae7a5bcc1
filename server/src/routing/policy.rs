//! Routing decisions, as pure functions over a snapshot.
//!
//! No I/O, no clocks, no atomics: [`decide`] sees each instance's role, load
//! and threshold and says what to do. The router applies the decision to the
//! live instances (and retries if it lost a race), so the rules the article
//! describes are all here, testable in isolation:
//! - send a request to the least loaded instance that takes traffic and is
//!   under its threshold, breaking ties fairly (round robin from `start`);
//! - when none can take it, promote a standby that would have room (a broken
//!   standby reads as saturated, and promoting it would not help);
//! - when there is no such standby, shed (503);
//! - once the actives have been calm (each under its threshold, none broken)
//!   for a cool-down, return promoted standbys to standby ([`demote`]): the
//!   standby is spare capacity, not a one-way door.

pub use crate::instance::Role;

/// One instance as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Its role.
    pub role: Role,
    /// Requests in flight or queued.
    pub load: usize,
    /// Threshold: at `load >= max_load` it is saturated.
    pub max_load: usize,
}

impl View {
    fn takes_traffic(&self) -> bool {
        self.role.serves() && self.load < self.max_load
    }
}

/// What the router should do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it to this instance.
    Route(usize),
    /// Every serving instance is saturated: promote this standby (the first with room), then
    /// decide again.
    Promote(usize),
    /// Nothing can take it: answer 503.
    Shed,
}

/// Decides where one request goes. `start` rotates between calls so that
/// equally loaded instances take turns.
pub fn decide(views: &[View], start: usize) -> Decision {
    decide_with(views, || start)
}

/// [`decide`], asking for `start` only when instances tie: the router's
/// turn counter is shared by every core, and most decisions (a single
/// instance, unequal loads) need not write to it.
pub fn decide_with(views: &[View], start: impl FnOnce() -> usize) -> Decision {
    let eligible = || views.iter().enumerate().filter(|(_, v)| v.takes_traffic());
    if let Some(min) = eligible().map(|(_, v)| v.load).min() {
        let tied = || eligible().filter(move |(_, v)| v.load == min);
        let pick = match tied().count() {
            1 => 0,
            count => start() % count,
        };
        let (i, _) = tied().nth(pick).expect("pick < count");
        return Decision::Route(i);
    }
    match views
        .iter()
        .position(|v| v.role == Role::Standby && v.load < v.max_load)
    {
        Some(i) => Decision::Promote(i),
        None => Decision::Shed,
    }
}

/// Whether the actives carry the load alone right now: there is at least
/// one, and every active (not promoted) instance is under its threshold.
/// A broken active should read as saturated (`load == max_load`).
pub fn calm(views: &[View]) -> bool {
    let mut actives = views.iter().filter(|v| v.role == Role::Active).peekable();
    actives.peek().is_some() && actives.all(|v| v.load < v.max_load)
}

/// The promoted instances to return to standby: every one, once the
/// actives have stayed calm for `cooldown` (`calm_for`, measured by the
/// caller from its samples); none before.
pub fn demote(
    views: &[View],
    calm_for: std::time::Duration,
    cooldown: std::time::Duration,
) -> Vec<usize> {
    if calm_for < cooldown || !calm(views) {
        return Vec::new();
    }
    views
        .iter()
        .enumerate()
        .filter(|(_, v)| v.role == Role::Promoted)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(role: Role, load: usize) -> View {
        View {
            role,
            load,
            max_load: 10,
        }
    }

    #[test]
    fn picks_the_least_loaded_active() {
        let views = [v(Role::Active, 3), v(Role::Active, 1), v(Role::Standby, 0)];
        assert_eq!(decide(&views, 0), Decision::Route(1));
    }

    #[test]
    fn ties_take_turns() {
        let views = [v(Role::Active, 2), v(Role::Active, 2), v(Role::Active, 2)];
        let picks: Vec<_> = (0..6).map(|s| decide(&views, s)).collect();
        let routed: Vec<usize> = picks
            .iter()
            .map(|d| match d {
                Decision::Route(i) => *i,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(routed, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn the_turn_is_taken_only_when_instances_tie() {
        let asked = std::cell::Cell::new(0);
        let start = || {
            asked.set(asked.get() + 1);
            1
        };
        let unequal = [v(Role::Active, 3), v(Role::Active, 1)];
        assert_eq!(decide_with(&unequal, start), Decision::Route(1));
        assert_eq!(
            decide_with(&[v(Role::Active, 5)], start),
            Decision::Route(0)
        );
        assert_eq!(asked.get(), 0);
        let tied = [v(Role::Active, 2), v(Role::Active, 2)];
        assert_eq!(decide_with(&tied, start), Decision::Route(1));
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn ties_take_turns_among_eligible_instances_only() {
        let views = [v(Role::Active, 0), v(Role::Active, 0), v(Role::Standby, 0)];
        let mut counts = [0; 3];
        for s in 0..30 {
            match decide(&views, s) {
                Decision::Route(i) => counts[i] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(counts, [15, 15, 0]);
    }

    #[test]
    fn standby_is_never_routed_while_an_active_has_room() {
        let views = [v(Role::Active, 9), v(Role::Standby, 0)];
        assert_eq!(decide(&views, 1), Decision::Route(0));
    }

    #[test]
    fn saturated_actives_promote_the_first_standby() {
        let views = [
            v(Role::Active, 10),
            v(Role::Active, 12),
            v(Role::Standby, 0),
            v(Role::Standby, 0),
        ];
        assert_eq!(decide(&views, 0), Decision::Promote(2));
    }

    /// The router reads a broken instance (no sandbox left) as saturated: such a standby is
    /// passed over for one that can serve, and with none, the request is shed.
    #[test]
    fn a_standby_without_room_is_not_promoted() {
        let broken = v(Role::Standby, 10);
        let views = [v(Role::Active, 10), broken, v(Role::Standby, 0)];
        assert_eq!(decide(&views, 0), Decision::Promote(2));
        assert_eq!(decide(&[v(Role::Active, 10), broken], 0), Decision::Shed);
    }

    #[test]
    fn promoted_instances_serve_like_actives() {
        let views = [v(Role::Active, 10), v(Role::Promoted, 4)];
        assert_eq!(decide(&views, 0), Decision::Route(1));
    }

    #[test]
    fn sheds_when_everything_is_full() {
        let views = [v(Role::Active, 10), v(Role::Promoted, 10)];
        assert_eq!(decide(&views, 0), Decision::Shed);
        assert_eq!(decide(&[], 0), Decision::Shed);
    }

    #[test]
    fn never_routes_to_a_saturated_or_standby_instance() {
        // Exhaustive over small snapshots: a Route always names a serving
        // instance under its threshold, with the minimum load among those.
        let roles = [Role::Active, Role::Standby, Role::Promoted];
        for a in 0..27 {
            for loads in 0..64 {
                let views: Vec<View> = (0..3)
                    .map(|k| View {
                        role: roles[(a / 3usize.pow(k)) % 3],
                        load: (loads >> (2 * k)) & 3,
                        max_load: 3,
                    })
                    .collect();
                for start in 0..3 {
                    match decide(&views, start) {
                        Decision::Route(i) => {
                            assert!(views[i].takes_traffic());
                            let min = views
                                .iter()
                                .filter(|x| x.takes_traffic())
                                .map(|x| x.load)
                                .min();
                            assert_eq!(Some(views[i].load), min);
                        }
                        Decision::Promote(i) => {
                            assert_eq!(views[i].role, Role::Standby);
                            assert!(views[i].load < views[i].max_load);
                            assert!(!views.iter().any(View::takes_traffic));
                        }
                        Decision::Shed => {
                            assert!(!views.iter().any(|x| x.takes_traffic()
                                || (x.role == Role::Standby && x.load < x.max_load)));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn promoted_standbys_return_only_after_a_calm_cool_down() {
        use std::time::Duration;
        let v = |role, load| View {
            role,
            load,
            max_load: 2,
        };
        let cool = Duration::from_secs(30);
        let promoted = [v(Role::Active, 1), v(Role::Active, 0), v(Role::Promoted, 2)];
        assert_eq!(demote(&promoted, cool, cool), vec![2]);
        assert!(demote(&promoted, cool - Duration::from_millis(1), cool).is_empty());
        // An active at its threshold (or broken) is not calm.
        let busy = [v(Role::Active, 2), v(Role::Active, 0), v(Role::Promoted, 0)];
        assert!(!calm(&busy));
        assert!(demote(&busy, cool * 10, cool).is_empty());
        // No actives at all: the promoted ones are the topology.
        assert!(!calm(&[v(Role::Promoted, 0), v(Role::Standby, 0)]));
        // Nothing promoted: nothing to do; a standby stays a standby.
        assert!(demote(&[v(Role::Active, 0), v(Role::Standby, 0)], cool, cool).is_empty());
    }
}

#[cfg(test)]
mod fuzz;
