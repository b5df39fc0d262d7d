//! An in-memory backend: the reference for the conformance suite and a store for tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use custodian_core::{Algorithm, Digest};
use futures::StreamExt;

use crate::{BlobBackend, BlobMeta, BlockSink, BlockStream, Expectation, Result, StorageError};

#[derive(Default)]
struct State {
    /// Committed blobs by SHA-256.
    blobs: HashMap<Digest, (BlobMeta, Arc<Vec<Bytes>>)>,
    /// BLAKE3 → SHA-256.
    by_blake3: HashMap<Digest, Digest>,
}

/// Keeps every blob in process memory. Nothing survives the process.
#[derive(Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    pending: Arc<AtomicU64>,
    block_size: usize,
}

impl MemoryBackend {
    /// An empty store with the given block size.
    pub fn new(block_size: usize) -> Self {
        assert!(block_size > 0, "block size must be positive");
        MemoryBackend {
            state: Arc::default(),
            pending: Arc::default(),
            block_size,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated: every update is a
        // pair of inserts or removes that cannot panic in between. So a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resolve(state: &State, digest: &Digest) -> Option<Digest> {
        match digest.algorithm() {
            Algorithm::Sha256 => Some(*digest),
            Algorithm::Blake3 => state.by_blake3.get(digest).copied(),
        }
    }
}

struct MemorySink {
    backend: MemoryBackend,
    blocks: Vec<Bytes>,
    done: bool,
}

impl Drop for MemorySink {
    fn drop(&mut self) {
        if !self.done {
            self.backend.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl BlockSink for MemorySink {
    async fn write_block(&mut self, index: u64, block: Bytes) -> Result<()> {
        debug_assert_eq!(index as usize, self.blocks.len());
        self.blocks.push(block);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, meta: BlobMeta) -> Result<(BlobMeta, bool)> {
        self.done = true;
        self.backend.pending.fetch_sub(1, Ordering::SeqCst);
        let mut state = self.backend.state();
        if let Some((existing, _)) = state.blobs.get(&meta.sha256()) {
            return Ok((existing.clone(), true));
        }
        let blocks = Arc::new(std::mem::take(&mut self.blocks));
        state.by_blake3.insert(meta.digests.blake3, meta.sha256());
        state.blobs.insert(meta.sha256(), (meta.clone(), blocks));
        Ok((meta, false))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    fn abandon_for_crash_test(self: Box<Self>) {
        // Memory does not survive a crash, so there is nothing to leave behind.
    }
}

#[async_trait]
impl BlobBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    async fn lookup(&self, digest: &Digest) -> Result<Option<BlobMeta>> {
        let state = self.state();
        Ok(Self::resolve(&state, digest)
            .and_then(|sha| state.blobs.get(&sha))
            .map(|(meta, _)| meta.clone()))
    }

    async fn begin(&self, _expect: &Expectation) -> Result<Box<dyn BlockSink>> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(MemorySink {
            backend: self.clone(),
            blocks: Vec::new(),
            done: false,
        }))
    }

    async fn read_blocks(&self, meta: &BlobMeta, first: u64, end: u64) -> Result<BlockStream> {
        let blocks = self
            .state()
            .blobs
            .get(&meta.sha256())
            .map(|(_, blocks)| blocks.clone())
            .ok_or(StorageError::NotFound {
                digest: meta.sha256(),
            })?;
        let range = first as usize..(end as usize).min(blocks.len());
        let items: Vec<Result<Bytes>> = blocks[range].iter().cloned().map(Ok).collect();
        Ok(futures::stream::iter(items).boxed())
    }

    async fn delete(&self, sha256: &Digest) -> Result<bool> {
        let mut state = self.state();
        match state.blobs.remove(sha256) {
            Some((meta, _)) => {
                state.by_blake3.remove(&meta.digests.blake3);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn pending_uploads(&self) -> Result<u64> {
        Ok(self.pending.load(Ordering::SeqCst))
    }

    async fn list(&self, after: Option<Digest>, limit: usize) -> Result<Vec<Digest>> {
        let state = self.state();
        let mut digests: Vec<Digest> = state
            .blobs
            .keys()
            .filter(|d| after.is_none_or(|a| d.bytes() > a.bytes()))
            .copied()
            .collect();
        digests.sort_unstable_by(|a, b| a.bytes().cmp(b.bytes()));
        digests.truncate(limit);
        Ok(digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobStore;
    use crate::conformance::{self, Harness};

    struct MemoryHarness(MemoryBackend);

    #[async_trait]
    impl Harness for MemoryHarness {
        async fn open(&self) -> BlobStore {
            BlobStore::new(Arc::new(self.0.clone()))
        }
        fn survives_restart(&self) -> bool {
            false
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        conformance::run(
            &MemoryHarness(MemoryBackend::new(1024)),
            conformance::Options::quick(),
        )
        .await;
    }
}
