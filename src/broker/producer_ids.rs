//! Producer ids for InitProducerId, handed out from blocks this broker takes through
//! the metadata quorum (`ClusterNode::allocate_producer_ids`): unique across the cluster
//! and never reused, across restarts too (a restarted broker takes a new block).

use crate::cluster::ClusterNode;
use crate::error::ApiError;
use std::sync::Mutex;

/// Ids per block, as Kafka's controller hands them out.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

#[derive(Default)]
pub struct ProducerIds {
    /// The rest of this broker's current block: `[next, end)`.
    block: Mutex<Option<(i64, i64)>>,
    /// Held while a new block is taken, so that only one is taken at a time.
    refill: tokio::sync::Mutex<()>,
}

impl ProducerIds {
    /// The next unused producer id (taking a new block when this one is used up).
    pub async fn next(&self, node: &ClusterNode) -> Result<i64, ApiError> {
        loop {
            if let Some(id) = self.try_next() {
                return Ok(id);
            }
            self.reserve(node).await?;
        }
    }

    /// The next unused producer id of the current block, if it has one left.
    pub fn try_next(&self) -> Option<i64> {
        let mut block = self.block.lock().unwrap_or_else(|p| p.into_inner());
        let (next, end) = (*block)?;
        if next >= end {
            return None;
        }
        assert!(next >= 0, "producer ids come from a granted block");
        *block = Some((next + 1, end));
        Some(next)
    }

    /// Makes sure the current block has an id left (taking a new block if not).
    pub async fn reserve(&self, node: &ClusterNode) -> Result<(), ApiError> {
        let _one_at_a_time = self.refill.lock().await;
        if self.available() {
            return Ok(());
        }
        let first = node.allocate_producer_ids(PRODUCER_ID_BLOCK_SIZE).await?;
        *self.block.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((first, first + PRODUCER_ID_BLOCK_SIZE));
        Ok(())
    }

    fn available(&self) -> bool {
        self.block
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|(next, end)| next < end)
    }
}
