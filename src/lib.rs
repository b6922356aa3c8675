//! impersonate-proxy: a forward proxy that terminates TLS for Google API
//! hosts and forwards each request with a credential chosen by route.
#![forbid(unsafe_code)]

pub mod ca;
pub mod config;
pub mod forward;
mod idle;
mod listener;
pub mod proxy;
pub mod reply;
mod request;
pub mod tls;
mod tunnel;

pub use config::Config;
pub use proxy::{Proxy, StartError};
