//! impersonate-proxy: a forward proxy that terminates TLS for Google API
//! hosts and forwards each request with a credential chosen by route.
#![forbid(unsafe_code)]

pub mod config;
pub mod emulator;
pub mod forward;
pub mod google;
pub mod tls;
pub mod tokens;
