//! impersonate-proxy: a forward proxy that terminates TLS for Google API
//! hosts and forwards each request with a credential chosen by route.
#![forbid(unsafe_code)]

mod admin;
mod audit;
pub mod ca;
mod clients;
pub mod config;
pub mod demo;
pub mod emulator;
pub mod forward;
pub mod google;
mod idle;
pub mod inject;
mod listener;
mod metadata;
mod metrics;
mod observe;
pub mod proxy;
pub mod reply;
mod request;
pub mod routes;
mod sticky;
pub mod tls;
pub mod tokens;
mod tunnel;

pub use config::Config;
pub use proxy::{Proxy, Reloader, StartError};
