//! Runtime facts on disk (the sled store of `hadr-state`).
//!
//! [`sync`] writes roles, counters and events off the request path;
//! [`recovery`] reconciles what was stored with the topology file at start,
//! so a host killed with `kill -9` comes back where it was.
//!
//! May use: `instance` and what it uses (`serving`, `sandbox`, `topology`).

pub mod recovery;
pub mod sync;
