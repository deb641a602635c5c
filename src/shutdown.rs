//! Shutdown signals. The first SIGTERM or Ctrl-C starts the drain (streams
//! stop reading, buffered rows are flushed, acks are sent; see
//! [`crate::server`] for the order and the deadline). A second signal exits
//! at once: only batches not yet acknowledged are left behind, and clients
//! resend those.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `drain` on the first signal; exits the process on the second.
pub fn on_signals(drain: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let next = async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        };
        let first = next.await;
        tracing::info!(
            signal = first,
            "shutting down: draining buffered rows (send the signal again to exit at once)"
        );
        drain.cancel();
        let second = async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        }
        .await;
        tracing::warn!(signal = second, "second signal: exiting without draining");
        std::process::exit(130);
    });
    Ok(())
}
