//! Notices when the processing loop stops coming back. The stall watch ([`super::stall`]) runs
//! on the loop's own thread, so a thread blocked inside one step (a Kafka call, a store write,
//! a wait without an end) escapes it, and the instance would sit silently with its transaction
//! open. A guard thread logs an error for every `RuntimeConfig::stall_after` the loop has not
//! come back, and `herald_runtime_loop_blocked_seconds` says for how long (0 while it turns),
//! so a supervisor or an alert can act; a restore in progress counts as coming back.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::runtime::RuntimeMetrics;

/// How often the guard looks at most.
const MAX_LOOK_EVERY: Duration = Duration::from_secs(1);

/// The guard thread, stopped when dropped.
pub(super) struct LoopGuard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopGuard {
    /// Starts watching the turns `metrics` records ([`RuntimeMetrics::loop_turned`]), taking
    /// the loop as blocked once it has not turned for `after`.
    pub(super) fn start(metrics: Arc<RuntimeMetrics>, after: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let look_every = MAX_LOOK_EVERY.min(after / 4);
        let thread = std::thread::spawn(move || {
            // The next blocked time to report.
            let mut report = after;
            metrics.loop_turned();
            while !flag.load(Ordering::SeqCst) {
                std::thread::park_timeout(look_every);
                let blocked = metrics.since_loop_turned();
                if blocked < after {
                    if report > after {
                        tracing::info!("the processing loop runs again");
                    }
                    report = after;
                    metrics.loop_blocked_seconds.set(0);
                    continue;
                }
                metrics.loop_blocked_seconds.set(blocked.as_secs() as i64);
                if blocked >= report {
                    tracing::error!(
                        seconds = blocked.as_secs(),
                        "the processing loop has not come back: blocked inside one step (a \
                         Kafka call, a store write, a wait without an end); its transaction \
                         stays open"
                    );
                    report += after;
                }
            }
            metrics.loop_blocked_seconds.set(0);
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
