//! Property tests over random snapshots: each rule in the module docs,
//! checked against `decide`, `calm` and `demote`.
use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::Active, Role::Standby, Role::Promoted])
}

/// Random snapshots, half of them with low loads and one threshold so
/// that ties (and instances with room) are common.
fn snapshot() -> impl Strategy<Value = Vec<View>> {
    let wide = (role(), 0usize..20, 1usize..15).prop_map(|(role, load, max_load)| View {
        role,
        load,
        max_load,
    });
    let tight = (role(), 0usize..3).prop_map(|(role, load)| View {
        role,
        load,
        max_load: 3,
    });
    prop_oneof![
        proptest::collection::vec(wide, 0..12),
        proptest::collection::vec(tight, 0..12),
    ]
}

/// Spelled out from the docs rather than calling `takes_traffic`.
fn takes(v: &View) -> bool {
    matches!(v.role, Role::Active | Role::Promoted) && v.load < v.max_load
}

/// A standby that would have room once promoted (a broken one reads as saturated).
fn spare(v: &View) -> bool {
    v.role == Role::Standby && v.load < v.max_load
}

/// The instances a tie is broken among: those that take traffic, at
/// the least load, in index order.
fn tied(views: &[View]) -> Vec<usize> {
    let min = views.iter().filter(|v| takes(v)).map(|v| v.load).min();
    (0..views.len())
        .filter(|&i| takes(&views[i]) && Some(views[i].load) == min)
        .collect()
}

proptest! {
    /// A route goes to a least-loaded instance that takes traffic; a
    /// promotion only when none does, to the first standby with room; a
    /// shed only when there is no such standby either. Same input, same answer.
    #[test]
    fn decide_follows_the_rules(views in snapshot(), start in any::<usize>()) {
        let d = decide(&views, start);
        prop_assert_eq!(d, decide(&views, start), "same snapshot and start");
        let tied = tied(&views);
        match d {
            Decision::Route(i) => prop_assert!(tied.contains(&i), "{:?} not among {:?}", d, tied),
            Decision::Promote(i) => {
                prop_assert!(tied.is_empty(), "promoted while {:?} had room", tied);
                prop_assert_eq!(Some(i), views.iter().position(spare));
            }
            Decision::Shed => {
                prop_assert!(tied.is_empty(), "shed while {:?} had room", tied);
                prop_assert!(!views.iter().any(spare), "shed with a standby that has room");
            }
        }
    }

    /// Ties take turns: consecutive starts walk the tied instances in
    /// index order, wrapping, so each gets one request per round.
    #[test]
    fn ties_take_turns_round_robin(views in snapshot(), start in 0usize..1 << 40) {
        let tied = tied(&views);
        if !tied.is_empty() {
            let n = tied.len();
            let picks: Vec<Decision> = (start..start + 2 * n).map(|s| decide(&views, s)).collect();
            let first = tied.iter().position(|&i| picks[0] == Decision::Route(i));
            prop_assert!(first.is_some(), "{:?} not among {:?}", picks[0], tied);
            let first = first.unwrap();
            for (k, pick) in picks.iter().enumerate() {
                prop_assert_eq!(*pick, Decision::Route(tied[(first + k) % n]), "start {}", start + k);
            }
        }
    }

    /// The router's loop (promote, then decide again) ends within one
    /// step per standby; a promoted standby takes the request (only one with
    /// room is promoted); it sheds only once nothing, standby or not, has room.
    #[test]
    fn promoting_then_deciding_again_ends(views in snapshot(), start in any::<usize>()) {
        let mut views = views;
        let standbys = views.iter().filter(|v| v.role == Role::Standby).count();
        let mut promoted = 0;
        loop {
            match decide(&views, start) {
                Decision::Promote(i) => {
                    prop_assert_eq!(views[i].role, Role::Standby);
                    views[i].role = Role::Promoted;
                    promoted += 1;
                    prop_assert!(promoted <= standbys, "promoted more than the standbys");
                    // Nothing else had room: the promoted one is the only choice.
                    prop_assert!(takes(&views[i]));
                    prop_assert_eq!(decide(&views, start), Decision::Route(i));
                }
                Decision::Route(i) => {
                    prop_assert!(takes(&views[i]));
                    break;
                }
                Decision::Shed => {
                    prop_assert!(views.iter().all(|v| !spare(v) && !takes(v)));
                    break;
                }
            }
        }
    }

    /// A standby is never routed to: adding one changes no route and no
    /// promotion, and turns a shed into its own promotion if it has room.
    #[test]
    fn a_standby_only_replaces_a_shed(views in snapshot(), start in any::<usize>(),
                                      load in 0usize..20, max_load in 1usize..15) {
        let before = decide(&views, start);
        let mut more = views.clone();
        more.push(View { role: Role::Standby, load, max_load });
        let after = decide(&more, start);
        if before == Decision::Shed && load < max_load {
            prop_assert_eq!(after, Decision::Promote(views.len()));
        } else {
            prop_assert_eq!(after, before);
        }
    }

    /// Calm is about the actives only: at least one, each under its
    /// threshold; promoted and standby instances do not count.
    #[test]
    fn calm_means_the_actives_have_room(views in snapshot()) {
        let actives: Vec<&View> = views.iter().filter(|v| v.role == Role::Active).collect();
        let want = !actives.is_empty() && actives.iter().all(|v| v.load < v.max_load);
        prop_assert_eq!(calm(&views), want);
    }

    /// Promoted instances go back only after a calm cool-down, and then
    /// all of them; nothing else is ever demoted; and what is left (the
    /// actives) still takes every request.
    #[test]
    fn demote_only_after_a_calm_cool_down(views in snapshot(), start in any::<usize>(),
                                          cool_ms in 0u64..60_000, calm_ms in 0u64..120_000,
                                          exact in any::<bool>()) {
        let cooldown = Duration::from_millis(cool_ms);
        // `exact`: calm for just the cool-down, which is enough.
        let calm_for = if exact { cooldown } else { Duration::from_millis(calm_ms) };
        let out = demote(&views, calm_for, cooldown);
        if calm_for >= cooldown && calm(&views) {
            let promoted: Vec<usize> =
                (0..views.len()).filter(|&i| views[i].role == Role::Promoted).collect();
            prop_assert_eq!(&out, &promoted);
            let mut after = views.clone();
            for &i in &out {
                after[i].role = Role::Standby;
            }
            prop_assert!(calm(&after));
            prop_assert!(demote(&after, calm_for, cooldown).is_empty());
            match decide(&after, start) {
                Decision::Route(i) => prop_assert_eq!(after[i].role, Role::Active),
                other => prop_assert!(false, "calm actives refused a request: {:?}", other),
            }
        } else {
            prop_assert!(out.is_empty(), "demoted {:?} before a calm cool-down", out);
        }
    }

    /// Roles survive the atomic's encoding; any other byte reads as a
    /// standby, which never serves.
    #[test]
    fn roles_round_trip_through_u8(byte in any::<u8>(), role in role()) {
        prop_assert_eq!(Role::from_u8(role as u8), role);
        let want = match byte {
            0 => Role::Active,
            2 => Role::Promoted,
            _ => Role::Standby,
        };
        prop_assert_eq!(Role::from_u8(byte), want);
        prop_assert_eq!(role.serves(), role != Role::Standby);
    }
}
