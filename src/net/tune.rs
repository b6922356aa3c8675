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
/// Idle upstream connections kept per host (per worker for forwarding)
/// once they have been unused for [`IDLE_SURPLUS_TIMEOUT`]. Client
/// connections hold an upstream connection only while a response streams
/// and connections in use are never closed for this cap, so it only says
/// how many stay warm through a lull; the next burst shares what comes
/// back and makes more [`MAX_CONNECTING_PER_HOST`] at a time. Each kept
/// connection also pins about 75 KiB of the allocator's pages after a
/// burst (it was made among the burst's short-lived allocations): 32 per
/// worker left the proxy at 2.0–2.1× its pre-load RSS after 5,000 busy
/// clients closed, 8 at 1.7× (`benches/README.md`).
pub const MAX_IDLE_PER_HOST: usize = 8;
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
