//! Linearizable reads of the metadata image (raft-rs ReadIndex).
//!
//! A broker checks an admin request (create, delete, add partitions, set configs)
//! against its own copy of the metadata image, which may lag the quorum: a topic another
//! broker just created and acknowledged may not be in it yet. Before checking, the
//! request asks the metadata leader for a read point (its commit index, confirmed by a
//! quorum) and waits until this broker's image has applied that far. This module keeps
//! the requests in flight; the driver task feeds it and it says whom to answer. No I/O.

use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// Read requests waiting at most, in flight and applying together; more are refused
/// (their callers ask again).
pub const MAX_METADATA_READS: usize = 1024;

#[derive(Debug)]
pub struct MetadataReads {
    next_context: u64,
    /// Asked of the leader, by request context.
    asked: BTreeMap<u64, oneshot::Sender<()>>,
    /// Answered with a read index, waiting for the image to apply it.
    applying: Vec<(u64, oneshot::Sender<()>)>,
    /// The metadata log's last index applied to the image.
    applied_index: u64,
}

impl MetadataReads {
    /// `applied_index`: how far the image already applied the metadata log.
    pub fn new(applied_index: u64) -> MetadataReads {
        MetadataReads {
            next_context: 0,
            asked: BTreeMap::new(),
            applying: Vec::new(),
            applied_index,
        }
    }

    /// A new request: the context to ask the leader with, or `None` when too many are
    /// waiting (the reply is dropped; the caller asks again). Requests whose callers gave
    /// up are forgotten first.
    pub fn ask(&mut self, reply: oneshot::Sender<()>) -> Option<Vec<u8>> {
        self.asked.retain(|_, r| !r.is_closed());
        self.applying.retain(|(_, r)| !r.is_closed());
        if self.asked.len() + self.applying.len() >= MAX_METADATA_READS {
            return None;
        }
        let context = self.next_context;
        self.next_context += 1;
        self.asked.insert(context, reply);
        Some(context.to_be_bytes().to_vec())
    }

    /// The leader's answer to a request: it is answered once the image applied `index`.
    /// An answer to nothing asked here (an earlier incarnation's, or a forged context) is
    /// ignored.
    pub fn answered(&mut self, context: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(context) else {
            return;
        };
        if let Some(reply) = self.asked.remove(&u64::from_be_bytes(bytes)) {
            self.applying.push((index, reply));
            self.release();
        }
    }

    /// The image applied the metadata log up to `index`.
    pub fn applied(&mut self, index: u64) {
        debug_assert!(index >= self.applied_index, "the image never goes back");
        self.applied_index = self.applied_index.max(index);
        self.release();
    }

    fn release(&mut self) {
        let applied = self.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.applying)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.applying = waiting;
        for (_, reply) in ready {
            let _ = reply.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_answered_once_the_image_applied_its_index() {
        let mut reads = MetadataReads::new(5);
        let (tx, mut rx) = oneshot::channel();
        let context = reads.ask(tx).unwrap();
        reads.answered(&context, 8);
        assert!(
            rx.try_recv().is_err(),
            "answered before the image applied index 8"
        );
        reads.applied(7);
        assert!(
            rx.try_recv().is_err(),
            "answered before the image applied index 8"
        );
        reads.applied(8);
        assert!(rx.try_recv().is_ok());

        // A read point the image already passed is answered at once.
        let (tx, mut rx) = oneshot::channel();
        let context = reads.ask(tx).unwrap();
        reads.answered(&context, 3);
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn unknown_answers_are_ignored_and_waiting_reads_are_bounded() {
        let mut reads = MetadataReads::new(0);
        reads.answered(b"not a context", 1);
        reads.answered(&42u64.to_be_bytes(), 1);
        let mut kept = Vec::new();
        for _ in 0..MAX_METADATA_READS {
            let (tx, rx) = oneshot::channel();
            assert!(reads.ask(tx).is_some());
            kept.push(rx);
        }
        let (tx, _rx) = oneshot::channel();
        assert!(
            reads.ask(tx).is_none(),
            "more than MAX_METADATA_READS waiting"
        );
        // Callers that gave up make room.
        kept.truncate(10);
        let (tx, _rx) = oneshot::channel();
        assert!(reads.ask(tx).is_some());
    }
}
