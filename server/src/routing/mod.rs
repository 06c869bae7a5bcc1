//! Routing: which instance takes a request.
//!
//! [`policy`] holds the article's rules as pure functions over a snapshot
//! (least-loaded active under its threshold, promote a standby, shed);
//! [`router`] builds the snapshot from the instances, leases the chosen one
//! and runs the promotion cool-down.
//!
//! May use: `instance` (and what it uses), and `state` (to nudge a write
//! after a promotion).

pub mod policy;
pub mod router;
