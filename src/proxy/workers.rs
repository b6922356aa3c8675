//! The worker threads: each a single-threaded event loop that accepts
//! from every configured listener (shared by all workers) and serves its
//! connections, with upstream connections of its own, so a request never
//! changes threads.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::tune;
use crate::ops::audit::Listener;
use crate::proxy::upstream::Upstream;
use crate::proxy::DataPlane;

/// Starts `n` worker threads accepting from `listeners` until `accepting`
/// is cancelled and serving their connections until `stop` is. Each holds
/// a token of `acceptors` until it has stopped accepting.
pub(crate) fn start(
    data: &Arc<DataPlane>,
    listeners: Vec<(Listener, TcpListener)>,
    n: usize,
    accepting: &CancellationToken,
    acceptors: &TaskTracker,
    stop: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let listeners = listeners
        .into_iter()
        .map(|(kind, l)| Ok((kind, l.into_std()?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut threads = Vec::with_capacity(n);
    let start_one = |i: usize| -> std::io::Result<std::thread::JoinHandle<()>> {
        // Built here so that its error is returned, and owned by a guard so
        // that a failure below (a descriptor, a thread) drops it without
        // blocking: this function runs inside the control runtime.
        let runtime = WorkerRuntime(Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        ));
        let listeners = listeners
            .iter()
            .map(|(kind, l)| Ok((*kind, l.try_clone()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let (data, accepting, done) = (data.clone(), accepting.clone(), stop.clone());
        let acceptor = acceptors.token();
        // Each worker has its own forwarding connections, so that a
        // connection is driven by the thread that sends on it.
        let upstream = Arc::new(Upstream::new(data.upstream.clone()));
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                let runtime = runtime;
                let Some(rt) = runtime.0.as_ref() else { return };
                rt.block_on(async move {
                    let idle = upstream.idle().clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(tune::UPSTREAM_IDLE_TIMEOUT / 3).await;
                            idle.prune();
                        }
                    });
                    let mut bound = Vec::with_capacity(listeners.len());
                    for (kind, l) in listeners {
                        match TcpListener::from_std(l) {
                            Ok(l) => bound.push((kind, l)),
                            Err(e) => tracing::error!(error = %e, listener = kind.as_str(), "worker cannot listen"),
                        }
                    }
                    crate::proxy::accept::accept_loop(&data, bound, upstream, accepting.cancelled())
                        .await;
                    drop(acceptor);
                    // Connections accepted here are served by this loop
                    // until the drain is over.
                    done.cancelled().await;
                });
            })
    };
    for i in 0..n.max(1) {
        match start_one(i) {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Those already started stop with the proxy.
                stop.cancel();
                return Err(e);
            }
        }
    }
    Ok(threads)
}

/// A worker's runtime, shut down in the background when dropped: it may be
/// dropped on the control runtime's thread when a later step of starting
/// the worker fails, where a blocking shutdown would panic.
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
