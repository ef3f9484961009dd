//! Admission control for answer generation: at most N generations run at
//! once, at most M wait for a slot; beyond that a chat is refused (429 with
//! `Retry-After`) instead of queueing without bound. A waiting chat that does
//! not get a slot in time is refused with 503.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use axum::http::StatusCode;

#[derive(Debug)]
pub struct GenerationGate {
    slots: Arc<Semaphore>,
    capacity: usize,
    queued: AtomicUsize,
    max_queued: usize,
    timeout: Duration,
}

/// Held for as long as a generation runs; dropping it frees the slot.
#[derive(Debug)]
pub struct GenerationPermit {
    _permit: OwnedSemaphorePermit,
}

/// Decrements the queue count however the wait ends (slot, timeout, or the
/// client going away and the future being dropped).
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("ragfleet_node_generations_queued").decrement(1.0);
    }
}

impl GenerationGate {
    pub fn new(capacity: usize, max_queued: usize, timeout: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            queued: AtomicUsize::new(0),
            max_queued,
            timeout,
        }
    }

    /// Generations running now.
    pub fn running(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Chats waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Take a slot, waiting in the bounded queue if all are busy.
    pub async fn acquire(&self) -> Result<GenerationPermit, ApiError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(GenerationPermit { _permit: p });
        }
        // Reserve a queue place; refuse if the queue is full.
        let prev = self.queued.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("ragfleet_node_generations_queued").increment(1.0);
        let guard = QueuedGuard(&self.queued);
        if prev >= self.max_queued {
            drop(guard);
            metrics::counter!("ragfleet_node_rejected_total", "reason" => "queue_full")
                .increment(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "all {} generation slots are busy and {} chats are queued; retry later",
                    self.capacity, self.max_queued
                ),
            )
            .retry_after(self.retry_hint()));
        }
        let res = tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await;
        drop(guard);
        match res {
            Ok(Ok(p)) => Ok(GenerationPermit { _permit: p }),
            Ok(Err(_closed)) => Err(ApiError::not_ready("the node is shutting down")),
            Err(_elapsed) => {
                metrics::counter!("ragfleet_node_rejected_total", "reason" => "queue_timeout")
                    .increment(1);
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "no generation slot became free within {} ms; retry later",
                        self.timeout.as_millis()
                    ),
                )
                .retry_after(self.retry_hint()))
            }
        }
    }

    fn retry_hint(&self) -> u64 {
        // A rough hint: a couple of seconds per queued chat per slot, 1..=30.
        let q = self.queued() as u64 + 1;
        (q * 2 / self.capacity.max(1) as u64).clamp(1, 30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_queue_refuses_with_429_then_recovers() {
        let gate = Arc::new(GenerationGate::new(1, 1, Duration::from_secs(5)));
        let first = gate.acquire().await.unwrap();
        assert_eq!(gate.running(), 1);
        // One waiter fits in the queue.
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move { g2.acquire().await.map(|_| ()) });
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        // The next one does not.
        let err = gate.acquire().await.unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(err.retry_after.is_some());
        assert_eq!(gate.queued(), 1);
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(gate.queued(), 0);
        assert_eq!(gate.running(), 0);
    }

    #[tokio::test]
    async fn queue_timeout_is_503() {
        let gate = GenerationGate::new(1, 4, Duration::from_millis(50));
        let _held = gate.acquire().await.unwrap();
        let err = gate.acquire().await.unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(gate.queued(), 0);
    }
}
