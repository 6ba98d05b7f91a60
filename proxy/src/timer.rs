//! Timers for the session threads, served by the main runtime.
//!
//! The session threads' event loops (crate::event_loop) keep no timers: a timer wheel costs every
//! park and wake of a loop (lock, expiry scan, clock read) whether or not a timer is armed — removing
//! tokio's from the session threads cut the proxy's instructions for 4,000 pgbench `-S` transactions by
//! 5.7 % (callgrind, deploy/bench/RESULTS.md). Sessions need timers only rarely (startup, connect, an
//! idle deadline), so those are armed on the main runtime, which has the time driver, and the session
//! awaits a handle to them; everything a session does with time goes through [`Timers`] (a bare
//! `tokio::time` future would also be served by the main runtime, whose context the session threads
//! enter, but armed from the wrong thread).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The runtime that keeps time (and opens side connections, whose drivers need timers).
#[derive(Clone, Debug)]
pub struct Timers {
    handle: Handle,
}

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Timers {
    /// Timers served by the runtime `handle` belongs to; it must have its time driver enabled.
    pub fn new(handle: Handle) -> Timers {
        Timers { handle }
    }

    /// A future that completes after `d`. Dropping it disarms the timer.
    pub fn sleep(&self, d: Duration) -> Sleep {
        // Built inside the task: `tokio::time::sleep` binds to the runtime it is created on.
        Sleep(
            self.handle
                .spawn(async move { tokio::time::sleep(d).await }),
        )
    }

    /// Runs `f` to completion unless `d` passes first (then `f` is dropped).
    pub async fn timeout<F: Future>(&self, d: Duration, f: F) -> Result<F::Output, Elapsed> {
        let deadline = self.sleep(d);
        tokio::select! {
            biased;
            r = f => Ok(r),
            () = deadline => Err(Elapsed),
        }
    }

    /// Runs `f` on the timer runtime (for work whose library arms tokio timers, such as
    /// tokio-postgres connections) and returns its output.
    pub async fn run<F>(&self, f: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f).await.ok()
    }
}

/// A timer armed on the timer runtime.
#[derive(Debug)]
pub struct Sleep(JoinHandle<()>);

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A timer task that could not finish (its runtime is shutting down) counts as expired.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When a session last saw traffic, cheap to update on every read (one relaxed store).
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Nanoseconds after `base`.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Records traffic now.
    pub fn touch(&self) {
        let ns = self.base.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.last.store(ns, Ordering::Relaxed);
    }

    /// How long ago the last traffic was.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor without a time driver (the session threads' event loops have none either), plus
    /// the timer runtime.
    fn session_thread() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
        let timers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let session = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        (timers, session)
    }

    #[test]
    fn sleep_and_timeout_work_on_a_runtime_without_a_time_driver() {
        let (main, session) = session_thread();
        let t = Timers::new(main.handle().clone());
        session.block_on(async {
            let started = Instant::now();
            t.sleep(Duration::from_millis(30)).await;
            assert!(started.elapsed() >= Duration::from_millis(30));

            let never = std::future::pending::<()>();
            assert_eq!(
                t.timeout(Duration::from_millis(10), never).await,
                Err(Elapsed)
            );
            assert_eq!(t.timeout(Duration::from_secs(60), async { 7 }).await, Ok(7));
        });
    }

    #[test]
    fn work_that_needs_timers_runs_on_the_timer_runtime() {
        let (main, session) = session_thread();
        let t = Timers::new(main.handle().clone());
        let out = session.block_on(t.run(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            "done"
        }));
        assert_eq!(out, Some("done"));
    }

    #[test]
    fn a_dropped_sleep_disarms_its_timer() {
        let (main, session) = session_thread();
        let t = Timers::new(main.handle().clone());
        let s = t.sleep(Duration::from_secs(3600));
        let task = s.0.abort_handle();
        drop(s);
        session.block_on(async {
            for _ in 0..100 {
                if task.is_finished() {
                    return;
                }
                t.sleep(Duration::from_millis(5)).await;
            }
            panic!("the timer task was not aborted");
        });
    }

    #[test]
    fn activity_measures_quiet_time() {
        let a = Activity::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.quiet_for() >= Duration::from_millis(20));
        a.touch();
        assert!(a.quiet_for() < Duration::from_millis(20));
    }
}
