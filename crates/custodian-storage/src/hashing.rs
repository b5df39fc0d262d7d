//! Hashing beside other work: a hasher that runs on a helper thread.
//!
//! SHA-256 is the slowest thing Custodian does per byte (about 1.3 GiB/s with SHA-NI). On a
//! large transfer, running it on its own thread lets receiving, BLAKE3, CRC32C and storage writes
//! proceed on another core at the same time. Bytes are handed over by reference count, not
//! copied, and the channel is bounded, so memory stays small however fast data arrives.

use bytes::Bytes;
use custodian_core::{Digest, StreamHasher};

/// How many pieces may wait for the helper thread before `update` waits.
const QUEUE: usize = 16;

/// A hasher that starts inline and can move to a helper thread.
pub enum OffThreadHasher {
    /// Hashing on the caller's thread.
    Inline(StreamHasher),
    /// Hashing on a helper thread.
    Threaded {
        /// Pieces for the helper; dropping it ends the helper.
        tx: tokio::sync::mpsc::Sender<Bytes>,
        /// The helper's result.
        done: tokio::sync::oneshot::Receiver<Digest>,
    },
}

impl OffThreadHasher {
    /// A hasher that hashes on the caller's thread until [`OffThreadHasher::go_parallel`].
    pub fn new(hasher: StreamHasher) -> Self {
        OffThreadHasher::Inline(hasher)
    }

    /// Moves hashing to a helper thread (once; later calls do nothing). If no thread can be
    /// started, hashing simply stays inline.
    pub fn go_parallel(&mut self) {
        let OffThreadHasher::Inline(hasher) = self else {
            return;
        };
        let mut hasher = hasher.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("custodian-hash".into())
            .spawn(move || {
                while let Some(piece) = rx.blocking_recv() {
                    hasher.update(&piece);
                }
                let _ = done_tx.send(hasher.finalize());
            });
        if spawned.is_ok() {
            *self = OffThreadHasher::Threaded { tx, done };
        }
    }

    /// Feeds the next bytes.
    pub async fn update(&mut self, data: &Bytes) {
        match self {
            OffThreadHasher::Inline(hasher) => hasher.update(data),
            OffThreadHasher::Threaded { tx, .. } => {
                // The helper only stops when `tx` is dropped, so sending cannot fail.
                let _ = tx.send(data.clone()).await;
            }
        }
    }

    /// The digest of everything fed, or `None` if the helper thread died.
    pub async fn finalize(self) -> Option<Digest> {
        match self {
            OffThreadHasher::Inline(hasher) => Some(hasher.finalize()),
            OffThreadHasher::Threaded { tx, done } => {
                drop(tx);
                done.await.ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_core::Algorithm;

    #[tokio::test]
    async fn threaded_equals_inline() {
        for algorithm in Algorithm::ALL {
            let data = crate::conformance::pattern(1, 100_000);
            let mut hasher = OffThreadHasher::new(StreamHasher::new(algorithm));
            hasher.update(&data.slice(..1000)).await;
            hasher.go_parallel();
            hasher.go_parallel();
            for piece in data[1000..].chunks(7777) {
                hasher.update(&Bytes::copy_from_slice(piece)).await;
            }
            assert_eq!(hasher.finalize().await, Some(Digest::of(algorithm, &data)));
        }
    }
}
