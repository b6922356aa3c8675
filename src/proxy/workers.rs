//! The worker threads: each a single-threaded event loop that accepts
//! from the shared listener and serves its connections, with upstream
//! connections of its own, so a request never changes threads.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::tune;
use crate::proxy::upstream::Upstream;
use crate::proxy::DataPlane;

/// Starts `n` worker threads accepting from `listener` until `accepting`
/// is cancelled and serving their connections until `stop` is. Each holds
/// a token of `acceptors` until it has stopped accepting.
pub(crate) fn start(
    data: &Arc<DataPlane>,
    listener: TcpListener,
    n: usize,
    accepting: &CancellationToken,
    acceptors: &TaskTracker,
    stop: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let listener = listener.into_std()?;
    let mut threads = Vec::with_capacity(n);
    let start_one = |i: usize| -> std::io::Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = listener.try_clone()?;
        let (data, accepting, done) = (data.clone(), accepting.clone(), stop.clone());
        let acceptor = acceptors.token();
        // Each worker has its own forwarding connections, so that a
        // connection is driven by the thread that sends on it.
        let upstream = Arc::new(Upstream::new(data.upstream.clone()));
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let idle = upstream.idle().clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(tune::UPSTREAM_IDLE_TIMEOUT / 3).await;
                            idle.prune();
                        }
                    });
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            crate::proxy::listener::accept_loop(
                                &data,
                                l,
                                upstream,
                                accepting.cancelled(),
                            )
                            .await
                        }
                        Err(e) => tracing::error!(error = %e, "worker cannot listen"),
                    }
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
