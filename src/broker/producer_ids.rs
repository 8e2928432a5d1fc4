//! Producer ids for InitProducerId, handed out from blocks this broker takes through
//! the metadata quorum (`ClusterNode::allocate_producer_ids`): unique across the cluster
//! and never reused, across restarts too (a restarted broker takes a new block).

use crate::cluster::ClusterNode;
use crate::error::ApiError;

/// Ids per block, as Kafka's controller hands them out.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// The rest of this broker's current block: `[next, end)`.
#[derive(Default)]
pub struct ProducerIds {
    block: tokio::sync::Mutex<Option<(i64, i64)>>,
}

impl ProducerIds {
    /// The next unused producer id (taking a new block when this one is used up).
    pub async fn next(&self, node: &ClusterNode) -> Result<i64, ApiError> {
        let mut block = self.block.lock().await;
        let (next, end) = match *block {
            Some((next, end)) if next < end => (next, end),
            _ => {
                let first = node.allocate_producer_ids(PRODUCER_ID_BLOCK_SIZE).await?;
                (first, first + PRODUCER_ID_BLOCK_SIZE)
            }
        };
        assert!(
            next < end && next >= 0,
            "producer ids come from a granted block"
        );
        *block = Some((next + 1, end));
        Ok(next)
    }
}
