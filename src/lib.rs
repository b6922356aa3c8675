//! impersonate-proxy: a forward proxy that terminates TLS for Google API
//! hosts and forwards each request with a credential chosen by route.
//!
//! The public interface is what `main.rs`, the tests and the benches use:
//! - [`Proxy`], [`StartError`], [`Reloader`]: bind, serve and reload;
//! - [`config`]: the TOML file; [`policy`]: the one compile pass and the
//!   hot path (`routes`, `inject`) the benches measure;
//! - [`google`]: source credentials, IAM Credentials, token slots;
//!   [`control`]: the token registry;
//! - [`net`]: the outbound client and the body type; [`ca`]: the CA;
//! - [`emulator`] and [`demo`]: the local stand-in for Google and the
//!   offline demo.
//!
//! Imports go one way: `config` ← `net` ← `ops` ← `google` ← `policy` ←
//! `control` ← `proxy` ← `main` (`tests/layers.rs` checks it).
#![forbid(unsafe_code)]

pub mod ca;
pub mod config;
pub mod control;
pub mod demo;
pub mod emulator;
pub mod google;
pub mod net;
mod ops;
pub mod policy;
pub mod proxy;
#[cfg(test)]
mod test_dir;

pub use config::Config;
pub use proxy::{LogReopener, Proxy, Reloader, StartError};
