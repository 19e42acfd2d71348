//! [`IoScheduler`]: a bounded pool of object-store request slots, handed
//! out by priority (demand reads, then uploads, then prefetch).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Request classes, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoClass {
    /// A read a caller is waiting for.
    Demand = 0,
    /// An upload (and the read of the block it merges over).
    Upload = 1,
    /// Read-ahead.
    Prefetch = 2,
}

struct State {
    free: usize,
    waiters: [VecDeque<oneshot::Sender<IoPermit>>; 3],
}

/// Slots for concurrent object-store requests. When all are taken, a
/// freed slot goes to the oldest waiter of the highest class.
#[derive(Clone)]
pub(crate) struct IoScheduler {
    state: Arc<Mutex<State>>,
}

/// One request slot; dropping it hands the slot on.
pub(crate) struct IoPermit {
    sched: Option<IoScheduler>,
}

impl IoScheduler {
    pub(crate) fn new(slots: usize) -> IoScheduler {
        IoScheduler {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                waiters: Default::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot at `class`'s priority.
    pub(crate) async fn acquire(&self, class: IoClass) -> IoPermit {
        let rx = {
            let mut s = self.lock();
            let ahead = s.waiters[..=class as usize].iter().any(|q| !q.is_empty());
            if s.free > 0 && !ahead {
                s.free -= 1;
                return IoPermit {
                    sched: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            s.waiters[class as usize].push_back(tx);
            rx
        };
        // The sender is only dropped together with the scheduler's state,
        // which this handle keeps alive.
        rx.await.unwrap_or(IoPermit { sched: None })
    }

    /// A slot only if one is free and nobody waits (for prefetch, which
    /// is skipped rather than queued).
    pub(crate) fn try_acquire(&self) -> Option<IoPermit> {
        let mut s = self.lock();
        if s.free > 0 && s.waiters.iter().all(|q| q.is_empty()) {
            s.free -= 1;
            Some(IoPermit {
                sched: Some(self.clone()),
            })
        } else {
            None
        }
    }

    fn release(&self) {
        let mut s = self.lock();
        for class in 0..3 {
            while let Some(tx) = s.waiters[class].pop_front() {
                let permit = IoPermit {
                    sched: Some(self.clone()),
                };
                match tx.send(permit) {
                    Ok(()) => return,
                    // The waiter gave up; its permit comes back here.
                    Err(mut p) => p.sched = None,
                }
            }
        }
        s.free += 1;
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.lock().free
    }
}

impl Drop for IoPermit {
    fn drop(&mut self) {
        if let Some(s) = self.sched.take() {
            s.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn freed_slots_go_to_the_highest_class_first() {
        let s = IoScheduler::new(1);
        let p = s.acquire(IoClass::Upload).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for class in [IoClass::Prefetch, IoClass::Upload, IoClass::Demand] {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = s.acquire(class).await;
                order.lock().unwrap().push(class);
            }));
            tokio::task::yield_now().await;
        }
        // Let all three queue up.
        while s.lock().waiters.iter().map(|q| q.len()).sum::<usize>() < 3 {
            tokio::task::yield_now().await;
        }
        assert!(s.try_acquire().is_none());
        drop(p);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![IoClass::Demand, IoClass::Upload, IoClass::Prefetch]
        );
        assert_eq!(s.free(), 1);
    }

    #[tokio::test]
    async fn an_abandoned_wait_does_not_leak_the_slot() {
        let s = IoScheduler::new(1);
        let p = s.acquire(IoClass::Demand).await;
        let waiting = {
            let s = s.clone();
            tokio::spawn(async move { s.acquire(IoClass::Demand).await })
        };
        while s.lock().waiters[0].is_empty() {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        drop(p);
        assert_eq!(s.free(), 1);
        assert!(s.try_acquire().is_some());
    }
}
