//! [`select3`]: the first of three futures to finish, polling each one only when its own waker fired.
//!
//! A session task runs its two pumps and the kill switch side by side. `tokio::select!` polls every
//! branch on every wake-up, so each server answer also re-polls the idle client pump (and each client
//! message the idle server pump): resuming its state machines down to a readiness check and a waker
//! registration, for nothing, twice per round trip. Here every branch gets a waker of its own that
//! marks the branch and wakes the task; the task then polls only the marked branches. (Measured again
//! on the session threads' own event loop, where a readiness check is a plain flag: polling every
//! branch cost 4 % more instructions per pgbench transaction than this.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Which branches were woken since the last poll, and the task to wake.
#[derive(Default)]
struct Woken {
    branches: AtomicU8,
    task: AtomicWaker,
}

/// The bits of all three branches.
const ALL: u8 = 1 | 2 | 4;

/// The waker handed to one branch.
struct BranchWaker {
    woken: Arc<Woken>,
    bit: u8,
}

impl Wake for BranchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.branches.fetch_or(self.bit, Ordering::AcqRel);
        self.woken.task.wake();
    }
}

/// Resolves to the output of whichever of `a`, `b`, `c` finishes first (polled in that order when
/// several are woken at once, like a biased `select!`); the others are dropped with the race.
pub fn select3<T, A, B, C>(a: A, b: B, c: C) -> Race3<A, B, C>
where
    A: Future<Output = T>,
    B: Future<Output = T>,
    C: Future<Output = T>,
{
    let woken = Arc::new(Woken::default());
    let waker = |bit| {
        Waker::from(Arc::new(BranchWaker {
            woken: woken.clone(),
            bit,
        }))
    };
    // Every branch is due at the first poll.
    woken.branches.store(ALL, Ordering::Relaxed);
    Race3 {
        wakers: [waker(1), waker(2), waker(4)],
        woken,
        a,
        b,
        c,
    }
}

pub struct Race3<A, B, C> {
    woken: Arc<Woken>,
    wakers: [Waker; 3],
    a: A,
    b: B,
    c: C,
}

impl<T, A, B, C> Future for Race3<A, B, C>
where
    A: Future<Output = T> + Unpin,
    B: Future<Output = T> + Unpin,
    C: Future<Output = T> + Unpin,
{
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        this.woken.task.register(cx.waker());
        let due = this.woken.branches.swap(0, Ordering::AcqRel);
        let [wa, wb, wc] = &this.wakers;
        if let Poll::Ready(v) = poll_if(due & 1 != 0, &mut this.a, wa) {
            return Poll::Ready(v);
        }
        if let Poll::Ready(v) = poll_if(due & 2 != 0, &mut this.b, wb) {
            return Poll::Ready(v);
        }
        poll_if(due & 4 != 0, &mut this.c, wc)
    }
}

/// Polls `f` with its own waker when it is due.
fn poll_if<F: Future + Unpin>(due: bool, f: &mut F, waker: &Waker) -> Poll<F::Output> {
    if !due {
        return Poll::Pending;
    }
    Pin::new(f).poll(&mut Context::from_waker(waker))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Counts its polls; ready once `ready` is set.
    fn counted(polls: Rc<Cell<u32>>, ready: Rc<Cell<bool>>, v: u32) -> impl Future<Output = u32> {
        std::future::poll_fn(move |_| {
            polls.set(polls.get() + 1);
            if ready.get() {
                Poll::Ready(v)
            } else {
                Poll::Pending
            }
        })
    }

    #[tokio::test]
    async fn only_the_woken_branch_is_polled_again() {
        let (pb, pc) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let ready_b = Rc::new(Cell::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let a = Box::pin(async move { rx.await.unwrap_or(0) });
        let b = Box::pin(counted(pb.clone(), ready_b.clone(), 2));
        let c = Box::pin(counted(pc.clone(), Rc::new(Cell::new(false)), 3));
        let mut race = select3(a, b, c);
        assert!(futures_util::poll!(&mut race).is_pending());
        assert_eq!((pb.get(), pc.get()), (1, 1));
        // Not woken: nothing but the race itself is polled.
        assert!(futures_util::poll!(&mut race).is_pending());
        assert_eq!((pb.get(), pc.get()), (1, 1));
        // Branch a is woken and finishes; b and c are not polled.
        tx.send(1).unwrap();
        assert_eq!(race.await, 1);
        assert_eq!((pb.get(), pc.get()), (1, 1));
    }

    #[tokio::test]
    async fn a_branch_woken_from_another_task_finishes_the_race() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let a = Box::pin(std::future::pending::<&str>());
        let b = Box::pin(std::future::pending::<&str>());
        let c = Box::pin(async move {
            n.notified().await;
            "killed"
        });
        let waker = tokio::spawn(async move {
            tokio::task::yield_now().await;
            notify.notify_one();
        });
        assert_eq!(select3(a, b, c).await, "killed");
        waker.await.unwrap();
    }

    #[tokio::test]
    async fn the_first_ready_branch_wins_in_order() {
        let a = Box::pin(async { 1 });
        let b = Box::pin(async { 2 });
        let c = Box::pin(async { 3 });
        assert_eq!(select3(a, b, c).await, 1);
    }
}
