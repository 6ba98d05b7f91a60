//! A session thread's event loop: a single-threaded executor for session tasks over an epoll reactor
//! of its own (mio), in place of a tokio current-thread runtime.
//!
//! Why: the session threads spend most of their time on two things per message — being told a socket
//! is readable and reading it, writing to the other side. A tokio runtime does that through shared,
//! thread-safe machinery (per-socket waiter lists under a mutex, atomic readiness and task states,
//! reference-counted wakers, the cooperative budget), which a loop owning its sockets and tasks does
//! not need. With the loop here every socket's readiness and waker live in plain cells the thread
//! owns; an epoll event sets a flag and queues the one task waiting on it (deploy/bench/RESULTS.md
//! has the measurements).
//!
//! What a session awaits besides its two sockets (timers, catalog loads, the kill switch, side
//! connections, DNS) stays on the main tokio runtime: every session thread enters its context, so
//! those futures work unchanged and wake session tasks from other threads through the loop's remote
//! queue and an eventfd ([`mio::Waker`]).
//!
//! A panic in a task ends that task only: the poll runs under `catch_unwind`, the task is dropped (its
//! sockets close), the task's [`OnPanic`] handler is told, and the loop goes on serving the others and
//! new clients. Jobs handed in from other threads are contained the same way.
//!
//! Only the session sockets ([`Conn`]) are registered here. A task that finds data on every read
//! would never yield; as tokio does, each task poll gets a budget of socket operations, after which
//! the task is re-queued behind the others.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use mio::{Events, Interest, Token};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The token of the loop's [`mio::Waker`] (remote wake-ups and new jobs).
const WAKE: Token = Token(usize::MAX);
/// Socket operations one task poll may complete before it yields to the other tasks.
const BUDGET: u32 = 128;

/// Work handed to a loop from another thread (a new session), run on the loop's thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// A task's future, boxed.
type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Called on the loop's thread when a task panicked, after the task was dropped, with the panic's
/// message: the task's owner ends what the task served (a session answers its client and audits it).
pub type OnPanic = Box<dyn FnOnce(&str)>;

/// What other threads can do to a loop: queue a job, wake a task, close it.
struct Remote {
    /// Distinguishes this loop's wakers from another loop's on the same thread (never: one loop per
    /// thread) or from a foreign thread.
    id: usize,
    jobs: Mutex<Vec<Job>>,
    woken: Mutex<Vec<usize>>,
    /// Set when `jobs` or `woken` may hold something: the loop locks them only then.
    pending: AtomicBool,
    closed: AtomicBool,
    waker: mio::Waker,
}

impl Remote {
    fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        // An eventfd write; it fails only when the loop is gone.
        let _ = self.waker.wake();
    }
}

/// A handle to a running loop, for other threads. Dropping it does not stop the loop; [`Handle::close`]
/// does.
pub struct Handle {
    remote: Arc<Remote>,
}

impl Handle {
    /// Runs `job` on the loop's thread (it may [`spawn`] tasks there).
    pub fn submit(&self, job: Job) {
        self.remote
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job);
        self.remote.notify();
    }

    /// Ends the loop: its tasks are dropped (their sockets closed) and its thread exits.
    pub fn close(&self) {
        self.remote.closed.store(true, Ordering::Release);
        self.remote.notify();
    }
}

/// Starts a loop on a new thread named `name`, inside the context of the tokio runtime `rt` (for
/// everything sessions await besides their sockets).
pub fn start(name: String, rt: tokio::runtime::Handle) -> io::Result<Handle> {
    static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
    let poll = mio::Poll::new()?;
    let registry = poll.registry().try_clone()?;
    let remote = Arc::new(Remote {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        jobs: Mutex::new(Vec::new()),
        woken: Mutex::new(Vec::new()),
        pending: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        waker: mio::Waker::new(poll.registry(), WAKE)?,
    });
    let r = remote.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        let _rt = rt.enter();
        run(poll, registry, r);
    })?;
    Ok(Handle { remote })
}

/// The thread's loop state that sockets and wakers reach through [`LOCAL`].
struct Local {
    id: usize,
    registry: mio::Registry,
    run_queue: RefCell<VecDeque<usize>>,
    /// Readiness of each registered socket, by token.
    sources: RefCell<Vec<Option<Rc<IoState>>>>,
    free_sources: RefCell<Vec<usize>>,
    /// Tasks spawned since the loop last looked.
    spawned: RefCell<Vec<(TaskFuture, Option<OnPanic>)>>,
    /// Socket operations left to the task being polled.
    budget: Cell<u32>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> Option<Rc<Local>> {
    LOCAL.try_with(|l| l.borrow().clone()).ok().flatten()
}

/// Runs `fut` as a task of the loop on this thread. Fails when this thread runs no loop.
pub fn spawn<F: Future<Output = ()> + 'static>(fut: F) -> io::Result<()> {
    spawn_inner(Box::pin(fut), None)
}

/// As [`spawn`], with `on_panic` told if the task panics (the task is dropped, the loop goes on).
pub fn spawn_guarded<F: Future<Output = ()> + 'static>(
    fut: F,
    on_panic: OnPanic,
) -> io::Result<()> {
    spawn_inner(Box::pin(fut), Some(on_panic))
}

fn spawn_inner(fut: TaskFuture, on_panic: Option<OnPanic>) -> io::Result<()> {
    let local = local().ok_or_else(not_a_loop_thread)?;
    local.spawned.borrow_mut().push((fut, on_panic));
    Ok(())
}

/// The message of a caught panic (`panic!("...")` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Runs `f`; a panic in it is caught and returned as its message.
fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

fn not_a_loop_thread() -> io::Error {
    io::Error::other("not on a session thread (no event loop runs on this thread)")
}

/// One task: its future, the waker that queues it and who to tell if it panics.
struct Task {
    fut: TaskFuture,
    wake: Arc<TaskWaker>,
    waker: Waker,
    on_panic: Option<OnPanic>,
}

struct TaskWaker {
    task: usize,
    /// Already in a run queue: a second wake-up before the poll adds nothing.
    queued: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let here = LOCAL
            .try_with(|l| match &*l.borrow() {
                Some(local) if local.id == self.remote.id => {
                    local.run_queue.borrow_mut().push_back(self.task);
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        if !here {
            self.remote
                .woken
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.task);
            self.remote.notify();
        }
    }
}

fn run(mut poll: mio::Poll, registry: mio::Registry, remote: Arc<Remote>) {
    let local = Rc::new(Local {
        id: remote.id,
        registry,
        run_queue: RefCell::new(VecDeque::new()),
        sources: RefCell::new(Vec::new()),
        free_sources: RefCell::new(Vec::new()),
        spawned: RefCell::new(Vec::new()),
        budget: Cell::new(BUDGET),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(local.clone()));
    let mut tasks: Vec<Option<Task>> = Vec::new();
    let mut free_tasks: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(256);
    loop {
        // A load first: the swap is a locked instruction, and nothing is pending on most turns.
        if remote.pending.load(Ordering::Acquire) && remote.pending.swap(false, Ordering::AcqRel) {
            let jobs = std::mem::take(&mut *remote.jobs.lock().unwrap_or_else(|p| p.into_inner()));
            for job in jobs {
                if let Err(msg) = contained(job) {
                    tracing::error!(
                        "a job on this session thread panicked (a bug in pgcloak): {msg}; the thread goes on"
                    );
                }
            }
            let woken =
                std::mem::take(&mut *remote.woken.lock().unwrap_or_else(|p| p.into_inner()));
            local.run_queue.borrow_mut().extend(woken);
        }
        if remote.closed.load(Ordering::Acquire) {
            break;
        }
        adopt(&local, &remote, &mut tasks, &mut free_tasks);
        // The tasks queued now; those they wake wait for the next round (after the sockets were
        // looked at again), so a task that always has work cannot starve the rest.
        let round = local.run_queue.borrow().len();
        for _ in 0..round {
            let Some(id) = local.run_queue.borrow_mut().pop_front() else {
                break;
            };
            let Some(task) = tasks.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            task.wake.queued.store(false, Ordering::Release);
            local.budget.set(BUDGET);
            let mut cx = Context::from_waker(&task.waker);
            match contained(|| task.fut.as_mut().poll(&mut cx)) {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(())) => {
                    // Dropped here: its sockets deregister (they borrow `sources`, free now).
                    tasks[id] = None;
                    free_tasks.push(id);
                }
                Err(msg) => {
                    let on_panic = task.on_panic.take();
                    // Dropping a task whose state a panic left half-changed may panic again.
                    let task = tasks[id].take();
                    free_tasks.push(id);
                    if let Err(again) = contained(|| drop(task)) {
                        tracing::error!("dropping a task that panicked panicked too: {again}");
                    }
                    match on_panic {
                        Some(f) => {
                            if let Err(again) = contained(|| f(&msg)) {
                                tracing::error!("the panic handler of a task panicked: {again}");
                            }
                        }
                        None => tracing::error!(
                            "a task on this session thread panicked (a bug in pgcloak): {msg}; only it was ended"
                        ),
                    }
                }
            }
            adopt(&local, &remote, &mut tasks, &mut free_tasks);
        }
        let busy = !local.run_queue.borrow().is_empty() || remote.pending.load(Ordering::Acquire);
        let timeout = busy.then_some(std::time::Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "session thread cannot wait for its sockets; its sessions end");
            break;
        }
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            let state = local
                .sources
                .borrow()
                .get(ev.token().0)
                .and_then(Option::clone);
            let Some(state) = state else { continue };
            if ev.is_read_closed() || ev.is_error() {
                // Final: no later event will say so again (edge-triggered).
                state.read_closed.set(true);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                state.readable.set(true);
                state.reader.wake();
            }
            if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                state.writable.set(true);
                state.writer.wake();
            }
        }
    }
    // Sockets deregister as their tasks drop, which needs the loop state still in place.
    drop(tasks);
    local.spawned.borrow_mut().clear();
    LOCAL.with(|l| *l.borrow_mut() = None);
}

/// Moves tasks spawned since the last look into the task table, queued for their first poll.
#[inline]
fn adopt(
    local: &Local,
    remote: &Arc<Remote>,
    tasks: &mut Vec<Option<Task>>,
    free: &mut Vec<usize>,
) {
    // Checked after every poll; tasks are spawned once per connection.
    if !local.spawned.borrow().is_empty() {
        adopt_spawned(local, remote, tasks, free);
    }
}

#[inline(never)]
fn adopt_spawned(
    local: &Local,
    remote: &Arc<Remote>,
    tasks: &mut Vec<Option<Task>>,
    free: &mut Vec<usize>,
) {
    let spawned = std::mem::take(&mut *local.spawned.borrow_mut());
    for (fut, on_panic) in spawned {
        let id = free.pop().unwrap_or_else(|| {
            tasks.push(None);
            tasks.len() - 1
        });
        let wake = Arc::new(TaskWaker {
            task: id,
            queued: AtomicBool::new(true),
            remote: remote.clone(),
        });
        let waker = Waker::from(wake.clone());
        tasks[id] = Some(Task {
            fut,
            wake,
            waker,
            on_panic,
        });
        local.run_queue.borrow_mut().push_back(id);
    }
}

/// Takes one socket operation from the polled task's budget; when it is spent, the task is re-queued
/// and must return `Pending`.
fn take_budget(local: &Local, cx: &Context<'_>) -> bool {
    let left = local.budget.get();
    if left == 0 {
        cx.waker().wake_by_ref();
        return false;
    }
    local.budget.set(left - 1);
    true
}

/// Readiness of one socket as the last epoll events and operations left it, with the task waiting to
/// read and the one waiting to write.
#[derive(Default)]
struct IoState {
    readable: Cell<bool>,
    /// The peer's end of file (or an error) was reported: reads never wait again, since the event
    /// that said so may have come together with the last data and will not come a second time.
    read_closed: Cell<bool>,
    writable: Cell<bool>,
    reader: Waiter,
    writer: Waiter,
}

/// The waker of a task waiting for one kind of readiness. The waker stays stored after a wake-up (a
/// task's waker rarely changes: storing it again is a comparison, not a clone and a drop of a
/// reference-counted waker per message); `armed` says whether the task is still waiting.
#[derive(Default)]
struct Waiter {
    waker: Cell<Option<Waker>>,
    armed: Cell<bool>,
}

impl Waiter {
    /// Keeps `cx`'s waker (cloned only when it changed) and waits.
    fn wait(&self, cx: &Context<'_>) {
        let current = self.waker.take();
        self.waker.set(match current {
            Some(w) if w.will_wake(cx.waker()) => Some(w),
            _ => Some(cx.waker().clone()),
        });
        self.armed.set(true);
    }

    /// Wakes the waiting task, if one waits.
    fn wake(&self) {
        if !self.armed.replace(false) {
            return;
        }
        let w = self.waker.take();
        if let Some(w) = &w {
            w.wake_by_ref();
        }
        self.waker.set(w);
    }
}

/// A TCP connection registered with this thread's loop.
struct ConnInner {
    sock: mio::net::TcpStream,
    state: Rc<IoState>,
    token: usize,
    local: Rc<Local>,
}

impl Drop for ConnInner {
    fn drop(&mut self) {
        let _ = self.local.registry.deregister(&mut self.sock);
        if let Some(slot) = self.local.sources.borrow_mut().get_mut(self.token) {
            *slot = None;
        }
        self.local.free_sources.borrow_mut().push(self.token);
    }
}

/// A client or server TCP connection of a session, served by the loop of the thread it was made on.
/// Not `Send`: it stays on that thread.
pub struct Conn {
    inner: Rc<ConnInner>,
}

impl Conn {
    /// Registers `sock` (non-blocking) with this thread's loop.
    pub fn new(sock: std::net::TcpStream) -> io::Result<Conn> {
        let local = local().ok_or_else(not_a_loop_thread)?;
        sock.set_nonblocking(true)?;
        let mut sock = mio::net::TcpStream::from_std(sock);
        let state = Rc::new(IoState {
            readable: Cell::new(true),
            writable: Cell::new(true),
            ..IoState::default()
        });
        let token = {
            let mut sources = local.sources.borrow_mut();
            let token = local.free_sources.borrow_mut().pop().unwrap_or_else(|| {
                sources.push(None);
                sources.len() - 1
            });
            sources[token] = Some(state.clone());
            token
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = local.registry.register(&mut sock, Token(token), interest) {
            local.sources.borrow_mut()[token] = None;
            local.free_sources.borrow_mut().push(token);
            return Err(e);
        }
        Ok(Conn {
            inner: Rc::new(ConnInner {
                sock,
                state,
                token,
                local,
            }),
        })
    }

    /// Moves a connection made on the main runtime (an upstream connect) to this thread's loop.
    pub fn from_tokio(sock: tokio::net::TcpStream) -> io::Result<Conn> {
        Conn::new(sock.into_std()?)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.sock.set_nodelay(on)
    }

    /// Reads into `buf` without consuming the bytes.
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &self.inner;
        std::future::poll_fn(|cx| {
            poll_io(&inner.state.readable, &inner.state.reader, cx, || {
                inner.sock.peek(buf)
            })
        })
        .await
    }

    /// Splits into a reading and a writing half (both on this thread).
    pub fn into_split(self) -> (ConnRead, ConnWrite) {
        (ConnRead(self.inner.clone()), ConnWrite(self.inner))
    }
}

/// The reading half of a [`Conn`].
pub struct ConnRead(Rc<ConnInner>);

impl ConnRead {
    /// `Ready` when the last event or read left the socket readable; otherwise the task waits for
    /// the next readable event.
    #[inline]
    pub fn poll_read_ready(&self, cx: &Context<'_>) -> Poll<()> {
        let state = &self.0.state;
        if state.readable.get() {
            return Poll::Ready(());
        }
        state.reader.wait(cx);
        Poll::Pending
    }
}

/// The writing half of a [`Conn`].
pub struct ConnWrite(Rc<ConnInner>);

/// Runs the socket operation `op` while `ready` says the socket may take it: `WouldBlock` clears the
/// flag and leaves the task waiting on `waiter` for the next event, `Interrupted` tries again.
#[inline(always)]
fn poll_io<T>(
    ready: &Cell<bool>,
    waiter: &Waiter,
    cx: &Context<'_>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        if !ready.get() {
            waiter.wait(cx);
            return Poll::Pending;
        }
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.set(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return Poll::Ready(r),
        }
    }
}

fn poll_recv(
    inner: &ConnInner,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if !take_budget(&inner.local, cx) {
        return Poll::Pending;
    }
    let state = &inner.state;
    let want = buf.remaining();
    poll_io(&state.readable, &state.reader, cx, || {
        recv_into(&inner.sock, buf)
    })
    .map_ok(|n| {
        // A short read emptied the socket (as tokio assumes on Linux): the next read waits for an
        // event instead of a system call that would say WouldBlock. End of file stays readable, also
        // when it was reported by the event that brought this data.
        if n > 0 && n < want && !state.read_closed.get() {
            state.readable.set(false);
        }
    })
}

/// `recv` into the unfilled part of `buf`, which may be uninitialised memory (a `BytesMut`'s spare
/// capacity): zeroing it first would cost a memset of the whole read size per read. The system call
/// is made directly (rustix), not through libc's wrapper, which brackets every `recv` and `send` with
/// thread-cancellation bookkeeping this process never uses.
#[allow(unsafe_code)]
fn recv_into(sock: &mio::net::TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: `recv` only writes into the slice; nothing here de-initialises bytes of it.
    let unfilled = unsafe { buf.unfilled_mut() };
    let ((filled, _), _) = rustix::net::recv(sock, unfilled, rustix::net::RecvFlags::empty())?;
    let n = filled.len();
    // SAFETY: the kernel wrote the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// `send` as [`recv_into`] receives; a peer that closed gets `EPIPE`, never a signal.
fn send(sock: &mio::net::TcpStream, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(
        sock,
        bytes,
        rustix::net::SendFlags::NOSIGNAL,
    )?)
}

fn poll_send(inner: &ConnInner, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
    if !take_budget(&inner.local, cx) {
        return Poll::Pending;
    }
    let state = &inner.state;
    poll_io(&state.writable, &state.writer, cx, || {
        send(&inner.sock, bytes)
    })
}

fn shutdown_write(inner: &ConnInner) -> Poll<io::Result<()>> {
    match inner.sock.shutdown(Shutdown::Write) {
        // Already closed by the peer: nothing left to shut down.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
        r => Poll::Ready(r),
    }
}

/// `AsyncRead` for a type whose field `$inner` is the `Rc<ConnInner>` of its connection.
macro_rules! conn_read {
    ($t:ty, $inner:tt) => {
        impl AsyncRead for $t {
            #[inline]
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                poll_recv(&self.$inner, cx, buf)
            }
        }
    };
}

/// `AsyncWrite` as [`conn_read`] does `AsyncRead`. Writes are not buffered: flushing has nothing to do.
macro_rules! conn_write {
    ($t:ty, $inner:tt) => {
        impl AsyncWrite for $t {
            #[inline]
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                poll_send(&self.$inner, cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                shutdown_write(&self.$inner)
            }
        }
    };
}

conn_read!(Conn, inner);
conn_write!(Conn, inner);
conn_read!(ConnRead, 0);
conn_write!(ConnWrite, 0);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh loop on its own thread, with the runtime it serves (keep it alive as long as the loop).
    fn test_loop(name: &str) -> (tokio::runtime::Runtime, Handle) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let lp = start(name.into(), rt.handle().clone()).unwrap();
        (rt, lp)
    }

    /// Runs `f` as a task on a fresh loop and returns what it sends back.
    fn on_loop<T: Send + 'static, F, Fut>(f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (_rt, lp) = test_loop("test-loop");
        let (tx, rx) = std::sync::mpsc::channel();
        lp.submit(Box::new(move || {
            spawn(async move {
                let _ = tx.send(f().await);
            })
            .unwrap();
        }));
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the task finishes");
        lp.close();
        out
    }

    /// A task that panics is dropped and its handler told; the loop goes on polling the other tasks
    /// and serving new ones, and a panicking job does not end it either.
    #[test]
    fn a_panicking_task_ends_alone_and_the_loop_keeps_serving() {
        use std::sync::mpsc;
        use std::time::Duration;
        let (_rt, lp) = test_loop("panic-loop");
        let (events, seen) = mpsc::channel::<String>();
        let (go_b, b_waits) = tokio::sync::oneshot::channel::<()>();
        let (go_a, a_waits) = tokio::sync::oneshot::channel::<()>();
        let ev = events.clone();
        lp.submit(Box::new(move || {
            // A: waits, then panics; its guard proves it was dropped.
            struct Dropped(mpsc::Sender<String>);
            impl Drop for Dropped {
                fn drop(&mut self) {
                    let _ = self.0.send("a dropped".into());
                }
            }
            let guard = Dropped(ev.clone());
            let told = ev.clone();
            spawn_guarded(
                async move {
                    let _guard = guard;
                    let _ = a_waits.await;
                    panic!("on purpose");
                },
                Box::new(move |msg| {
                    let _ = told.send(format!("a panicked: {msg}"));
                }),
            )
            .unwrap();
            // B: waits across A's panic, then reports.
            let ev = ev.clone();
            spawn(async move {
                let _ = b_waits.await;
                let _ = ev.send("b done".into());
            })
            .unwrap();
        }));
        let next = || seen.recv_timeout(Duration::from_secs(10)).unwrap();
        go_a.send(()).unwrap();
        assert_eq!(next(), "a dropped");
        assert_eq!(next(), "a panicked: on purpose");
        go_b.send(()).unwrap();
        assert_eq!(next(), "b done");
        // A job that panics, then a new task: still served.
        lp.submit(Box::new(|| panic!("job on purpose")));
        let ev = events.clone();
        lp.submit(Box::new(move || {
            spawn(async move {
                let _ = ev.send("c done".into());
            })
            .unwrap();
        }));
        assert_eq!(next(), "c done");
        lp.close();
    }

    /// A peer that reads five bytes, answers them twice and closes (which ends the stream).
    fn doubling_peer() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.repeat(2)).unwrap();
        });
        (addr, peer)
    }

    /// Sends "hello" to a [`doubling_peer`] from a loop task and reads to end of file. With
    /// `answer_and_close_together`, the task first waits for a readable event and, while it still
    /// holds the thread, asks and lets the answer and the end of file arrive, so the loop's next epoll
    /// wait reports them as one event.
    fn hello_doubled(answer_and_close_together: bool) -> Vec<u8> {
        let (addr, peer) = doubling_peer();
        let got = on_loop(move || async move {
            let conn = Conn::new(std::net::TcpStream::connect(addr).unwrap()).unwrap();
            let (mut r, mut w) = conn.into_split();
            if answer_and_close_together {
                std::future::poll_fn(|cx| {
                    let mut buf = [0u8; 64];
                    let mut rb = ReadBuf::new(&mut buf);
                    assert!(Pin::new(&mut r).poll_read(cx, &mut rb).is_pending());
                    assert!(Pin::new(&mut w).poll_write(cx, b"hello").is_ready());
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    Poll::Ready(())
                })
                .await;
            } else {
                w.write_all(b"hello").await.unwrap();
            }
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        });
        peer.join().unwrap();
        got
    }

    #[test]
    fn relays_bytes_both_ways_and_sees_end_of_file() {
        assert_eq!(hello_doubled(false), b"hellohello");
    }

    #[test]
    fn end_of_file_arriving_with_the_last_data_is_seen() {
        // One edge-triggered event reports both the data and the end of file; the short read of the
        // data must not make the reader wait for another.
        assert_eq!(hello_doubled(true), b"hellohello");
    }

    #[test]
    fn a_write_the_peer_cannot_take_yet_waits_for_it() {
        // Far more than the socket buffers hold: the writer must wait for writable events.
        const N: usize = 16 * 1024 * 1024;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            use std::io::Read;
            let (mut s, _) = listener.accept().unwrap();
            // Let the writer fill the buffers first.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all.len()
        });
        on_loop(move || async move {
            let mut c = Conn::new(std::net::TcpStream::connect(addr).unwrap()).unwrap();
            c.write_all(&vec![7u8; N]).await.unwrap();
            c.shutdown().await.unwrap();
        });
        assert_eq!(peer.join().unwrap(), N);
    }

    #[test]
    fn closing_the_loop_closes_its_sessions_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (_rt, lp) = test_loop("test-loop");
        lp.submit(Box::new(move || {
            spawn(async move {
                let mut c = Conn::new(std::net::TcpStream::connect(addr).unwrap()).unwrap();
                // Waits for ever: only closing the loop ends it.
                let mut buf = [0u8; 1];
                let _ = c.read(&mut buf).await;
                std::future::pending::<()>().await;
            })
            .unwrap();
        }));
        let (mut s, _) = listener.accept().unwrap();
        lp.close();
        use std::io::Read;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "the peer sees end of file");
    }

    #[test]
    fn a_task_woken_from_another_thread_runs() {
        let got = on_loop(|| async {
            // A oneshot completed on the main runtime wakes this task from that runtime's thread.
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let _ = tx.send(7u32);
            });
            rx.await.unwrap()
        });
        assert_eq!(got, 7);
    }

    #[test]
    fn a_busy_reader_does_not_starve_other_tasks() {
        // One task reads a socket that always has data; another must still run.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let flood = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while s.write_all(&chunk).is_ok() {}
        });
        let done = on_loop(move || async move {
            let flag = Rc::new(Cell::new(false));
            let f = flag.clone();
            spawn(async move {
                let mut c = Conn::new(std::net::TcpStream::connect(addr).unwrap()).unwrap();
                let mut buf = vec![0u8; 4096];
                while !f.get() {
                    if c.read(&mut buf).await.unwrap_or(0) == 0 {
                        break;
                    }
                }
            })
            .unwrap();
            // Yield until the reader runs, then check that this task gets turns while it reads.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            flag.set(true);
            true
        });
        assert!(done);
        drop(flood);
    }

    #[test]
    fn conn_needs_a_loop_thread() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let e = Conn::new(s).err().expect("no loop on this thread");
        assert!(e.to_string().contains("session thread"), "{e}");
    }
}
