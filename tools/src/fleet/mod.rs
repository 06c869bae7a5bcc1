//! A topology spread over hosts: one `hadr-host serve --only <entry>` per
//! machine, with HAProxy in front as the router across them.
//!
//! - [`haproxy`]: the HAProxy 2.6 configuration that keeps the article's
//!   router semantics (`hadr-host export haproxy`).
//! - [`rolling`]: a deploy rolled across the hosts of a topology, one host at
//!   a time (`hadr-host deploy --fleet`).
//! - [`local`]: a whole fleet on one machine, one process per entry on its
//!   own loopback address behind a real HAProxy (the fleet drill and tests).
//!
//! Tooling only: it reads topology files and talks to hosts over HTTP; the
//! server never uses it. docs/fleet.md explains the design.
//!
//! May use: `admin_client`, `spawn`, and `hadr_server`'s topology reader.

pub mod haproxy;
pub mod local;
pub mod rolling;
