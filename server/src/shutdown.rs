//! Shutdown: one signal every task listens to.
//!
//! [`Shutdown::trigger`] (or SIGINT/SIGTERM, via [`Shutdown::on_signals`])
//! flips one watch channel; accept loops stop accepting, and open
//! connections finish their in-flight request before closing.
//!
//! A leaf: uses no other module of the crate.

use tokio::sync::watch;

/// A cloneable handle on the process's shutdown signal.
#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    /// Fires the signal; every waiter wakes.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone: treat as fired.
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// Fires the signal on SIGINT or SIGTERM, after draining: `draining` is
    /// set at once (readiness turns 503, so a balancer stops sending) and
    /// the host keeps serving for `drain` before it stops accepting. A second
    /// signal stops it at once; two more while it stops exit the process.
    pub fn on_signals(
        &self,
        drain: std::time::Duration,
        draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if !drain.is_zero() {
                draining.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(
                    ?drain,
                    "{name} received: draining (readiness 503, still serving), then stopping"
                );
                tokio::select! {
                    _ = tokio::time::sleep(drain) => {}
                    _ = term.recv() => tracing::info!("second signal: stopping now"),
                    _ = int.recv() => tracing::info!("second signal: stopping now"),
                }
            } else {
                tracing::info!("{name} received: stopping");
            }
            this.trigger();
            // Still listening: tokio keeps its handler installed, so signals
            // while the host stops (in-flight calls, a rollout settling, the
            // last commit) would otherwise be swallowed. The first one may
            // be a doubled stop (SIGINT, then a script's SIGTERM): only the
            // one after it exits.
            for left in [1, 0] {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if left > 0 {
                    tracing::warn!("signal while stopping: the host is finishing its calls and saving its state; one more exits at once");
                }
            }
            tracing::warn!("signal while stopping: exiting now, without the last state commit");
            std::process::exit(1);
        });
        Ok(())
    }
}
