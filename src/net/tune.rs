//! The numbers that tune connections, in one place: the forwarding
//! connections (`proxy::upstream`), the proxy's own calls (`net::Outbound`)
//! and the client-facing HTTP/2 server use the same ones.

use std::time::Duration;

/// HTTP/2 stream window upstream. Fixed, not adaptive: an adaptive window
/// starts at 64 KiB and throttles large responses while it learns; 4 MiB
/// per stream (8 MiB per connection) bounds what one upstream connection
/// can buffer.
pub const H2_STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 connection window upstream; see [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 8 << 20;
/// HTTP/2 keep-alive PING interval, both sides.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long an HTTP/2 keep-alive PING may go unanswered.
pub const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// An idle upstream connection is closed after this long unused.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle upstream connections kept per host (per worker for forwarding).
/// Client connections hold an upstream connection only while a response
/// streams, so this many cover a worker's bursts; more would only hold
/// memory and the upstream's places after the burst (nginx's `keepalive`
/// is per worker too, and its examples use 16–32).
pub const MAX_IDLE_PER_HOST: usize = 32;
/// During a burst (more responses ending than requests starting), up to
/// this many idle upstream connections per host per worker are kept for
/// the requests about to come, instead of closing them and opening new
/// ones a moment later.
pub const MAX_IDLE_BURST: usize = 1024;
/// New upstream HTTP/1.1 connections being made at once, per host per
/// worker. A request that finds no idle connection and no permit waits
/// for the first of a connection handed back and a permit: when a fleet
/// of idle clients turns busy at once, a few connections are made and
/// shared instead of one TLS handshake per request (the upstream's CPU
/// and the proxy's). Connections that stay busy (long responses) free
/// their permit once made, so the number of connections is not capped.
pub const MAX_CONNECTING_PER_HOST: usize = 16;
/// Idle upstream connections beyond [`MAX_IDLE_PER_HOST`] are closed once
/// unused for this long: a burst's connections go soon after it ends.
pub const IDLE_SURPLUS_TIMEOUT: Duration = Duration::from_secs(2);
/// An HTTP/1.1 client connection with nothing in flight for this long
/// gives back hyper's buffers (`proxy::park`) and waits for its next
/// request holding only its TLS session. Under load a connection is
/// never this quiet, so the busy path is unchanged.
pub const PARK_AFTER: Duration = Duration::from_secs(1);
/// The listeners' accept backlog: deep enough for a burst of clients
/// waiting for a place under `max_connections` (the default of 128 drops
/// them).
pub const ACCEPT_BACKLOG: u32 = 4096;
