//! The one queue discipline of every sink: batches of spans from the capture task to the sink's
//! own thread or task, bounded in spans, never blocking the sender.
//!
//! [`Sender::try_send`] takes a batch or gives it back: when the spans already waiting plus the
//! batch exceed the bound (one batch larger than the bound still goes when nothing waits), or
//! when the receiver is gone. The sink counts what it gets back, under its own counter. The
//! receiving end waits on a thread ([`Receiver::recv_blocking`], [`Receiver::recv_timeout`]) or in a task
//! ([`Receiver::recv`]).

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;

use super::Finishing;
use crate::spans::Span;

struct Shared {
    state: Mutex<State>,
    /// Wakes a receiver on a thread.
    ready: Condvar,
    /// Wakes a receiver in a task.
    notify: Notify,
    max_spans: usize,
}

#[derive(Default)]
struct State {
    batches: VecDeque<Vec<Span>>,
    /// Spans in `batches`.
    spans: usize,
    senders: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self) {
        self.ready.notify_all();
        self.notify.notify_one();
    }
}

/// A queue of at most `max_spans` waiting spans (at least one batch).
pub fn bounded(max_spans: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            senders: 1,
            ..State::default()
        }),
        ready: Condvar::new(),
        notify: Notify::new(),
        max_spans,
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// The capture side. Cloning it adds a sender; the queue ends when every sender is dropped.
pub struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Queues `batch` without blocking, or gives it back (queue full, or receiver gone). An
    /// empty batch is taken and dropped.
    pub fn try_send(&self, batch: Vec<Span>) -> Result<(), Vec<Span>> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        if state.closed || (state.spans > 0 && state.spans + batch.len() > self.shared.max_spans) {
            return Err(batch);
        }
        state.spans += batch.len();
        state.batches.push_back(batch);
        drop(state);
        self.shared.wake();
        Ok(())
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.shared.wake();
        }
    }
}

impl Sender {
    /// Spans waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.lock().spans
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("max_spans", &self.shared.max_spans)
            .finish_non_exhaustive()
    }
}

/// A sink's thread, fed through a queue: the discipline in one place. Spans it cannot take are
/// added to the sink's drop counter.
pub struct Worker {
    tx: Sender,
    thread: std::thread::JoinHandle<()>,
    dropped: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Worker {
    /// Starts thread `name` running `work` on the receiving end of a queue of `max_spans`;
    /// `dropped` counts the spans refused.
    pub fn spawn(
        name: &str,
        max_spans: usize,
        dropped: impl Fn(u64) + Send + Sync + 'static,
        work: impl FnOnce(Receiver) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = bounded(max_spans);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || work(rx))?;
        Ok(Worker {
            tx,
            thread,
            dropped: Arc::new(dropped),
        })
    }

    /// Queues `spans` without blocking, or counts them as dropped.
    pub fn send(&self, spans: Vec<Span>) {
        if let Err(refused) = self.tx.try_send(spans) {
            (self.dropped)(refused.len() as u64);
        }
    }

    /// Spans waiting for the thread now.
    pub fn queued(&self) -> usize {
        self.tx.queued()
    }

    /// Ends the queue and waits (off the runtime's threads) for the thread to finish its work.
    pub fn finish(self) -> Finishing {
        let Worker { tx, thread, .. } = self;
        drop(tx);
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        })
    }
}

/// What a receiver got.
#[derive(Debug)]
pub enum Received {
    Batch(Vec<Span>),
    /// Nothing waits (or came in time).
    Empty,
    /// Every sender is gone (or the queue was closed) and nothing is left.
    Ended,
}

/// The sink side.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// The oldest batch if one waits; `Ended` when none does and no more can come.
    pub fn try_recv(&mut self) -> Received {
        let mut state = self.shared.lock();
        Self::take(&mut state)
    }

    fn take(state: &mut State) -> Received {
        match state.batches.pop_front() {
            Some(batch) => {
                state.spans -= batch.len();
                Received::Batch(batch)
            }
            None if state.closed || state.senders == 0 => Received::Ended,
            None => Received::Empty,
        }
    }

    /// Waits on this thread for a batch, at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Received {
        let state = self.shared.lock();
        let (mut state, _) = self
            .shared
            .ready
            .wait_timeout_while(state, timeout, |s| {
                s.batches.is_empty() && !s.closed && s.senders > 0
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::take(&mut state)
    }

    /// Waits on this thread for a batch; `None` once no more can come.
    pub fn recv_blocking(&mut self) -> Option<Vec<Span>> {
        let state = self.shared.lock();
        let mut state = self
            .shared
            .ready
            .wait_while(state, |s| {
                s.batches.is_empty() && !s.closed && s.senders > 0
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match Self::take(&mut state) {
            Received::Batch(batch) => Some(batch),
            Received::Empty | Received::Ended => None,
        }
    }

    /// Waits in a task for a batch; `None` once no more can come.
    pub async fn recv(&mut self) -> Option<Vec<Span>> {
        loop {
            match self.try_recv() {
                Received::Batch(batch) => return Some(batch),
                Received::Ended => return None,
                Received::Empty => self.shared.notify.notified().await,
            }
        }
    }

    /// Refuses further batches; those already queued can still be taken.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::testing::{resource, span};

    fn batch(n: usize) -> Vec<Span> {
        let r = resource("q", 1);
        (0..n).map(|i| span(&format!("s{i}"), &r)).collect()
    }

    #[test]
    fn bounded_in_spans_and_hands_back_what_does_not_fit() {
        let (tx, mut rx) = bounded(4);
        assert!(tx.try_send(batch(3)).is_ok());
        assert_eq!(tx.try_send(batch(2)).map_err(|b| b.len()), Err(2));
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(matches!(rx.try_recv(), Received::Batch(b) if b.len() == 3));
        assert!(tx.try_send(batch(3)).is_ok());
        // A batch larger than the bound goes when nothing waits.
        let (big_tx, _big_rx) = bounded(2);
        assert!(big_tx.try_send(batch(5)).is_ok());
        drop(tx);
        assert!(
            matches!(rx.recv_timeout(Duration::from_millis(1)), Received::Batch(b) if b.len() == 1)
        );
        assert!(
            matches!(rx.recv_timeout(Duration::from_millis(1)), Received::Batch(b) if b.len() == 3)
        );
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(1)),
            Received::Ended
        ));
    }

    #[test]
    fn a_closed_or_dropped_receiver_refuses_batches() {
        let (tx, mut rx) = bounded(8);
        rx.close();
        assert!(tx.try_send(batch(1)).is_err());
        let (tx, rx) = bounded(8);
        drop(rx);
        assert!(tx.try_send(batch(1)).is_err());
    }

    #[test]
    fn a_waiting_thread_wakes_for_a_batch() {
        let (tx, mut rx) = bounded(8);
        let waiter = std::thread::spawn(move || {
            matches!(rx.recv_timeout(Duration::from_secs(10)), Received::Batch(_))
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(tx.try_send(batch(1)).is_ok());
        assert!(waiter.join().expect("thread"));
    }
}
