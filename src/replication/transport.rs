//! The inter-broker transport for Raft messages: length-delimited prost frames over TCP,
//! one outbound connection per peer, bounded queues, reconnect with backoff.
//!
//! Raft tolerates lost messages, so the transport never blocks the driver: a batch for a
//! peer whose queue is full is dropped (and counted). A frame that is too large or does
//! not decode closes that connection, logged once per connection. Sockets come from
//! `tokio`, which is madsim's under the simulator.

use super::driver::GroupMessage;
use protobuf::Message as _;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest frame sent or accepted between brokers.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Batches queued for one peer before new ones are dropped.
pub const PEER_QUEUE_BATCHES: usize = 1024;
const BACKOFF_MIN_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 1_000;

/// One Raft message for one group, as sent between brokers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftEnvelope {
    #[prost(string, tag = "1")]
    pub group: String,
    /// An `eraftpb::Message` in raft-rs's own protobuf encoding.
    #[prost(bytes = "vec", tag = "2")]
    pub message: Vec<u8>,
}

/// Everything one broker sends another in one write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerFrame {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(message, repeated, tag = "2")]
    pub messages: Vec<RaftEnvelope>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

pub fn encode_frame(from: u64, batch: &[GroupMessage]) -> Result<Vec<u8>, FrameError> {
    let messages = batch
        .iter()
        .map(|m| {
            let message = m
                .message
                .write_to_bytes()
                .map_err(|e| FrameError::Decode(e.to_string()))?;
            Ok(RaftEnvelope {
                group: m.group.clone(),
                message,
            })
        })
        .collect::<Result<Vec<_>, FrameError>>()?;
    let body = prost::Message::encode_to_vec(&PeerFrame { from, messages });
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame body (without its length prefix).
pub fn decode_frame(body: &[u8]) -> Result<(u64, Vec<GroupMessage>), FrameError> {
    let frame: PeerFrame =
        prost::Message::decode(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    let messages = frame
        .messages
        .into_iter()
        .map(|e| {
            let message = raft::eraftpb::Message::parse_from_bytes(&e.message)
                .map_err(|e| FrameError::Decode(e.to_string()))?;
            Ok(GroupMessage {
                group: e.group,
                message,
            })
        })
        .collect::<Result<Vec<_>, FrameError>>()?;
    Ok((frame.from, messages))
}

async fn read_frame(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, FrameError> {
    let mut size = [0u8; 4];
    match stream.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(size) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(size));
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Outbound side: a queue and a connection task per peer.
pub struct Transport {
    node_id: u64,
    peers: BTreeMap<u64, mpsc::Sender<Vec<GroupMessage>>>,
    dropped_batches: Arc<AtomicU64>,
}

impl Transport {
    /// Starts a sender task for every peer (other than `node_id`).
    pub fn start(node_id: u64, peers: &BTreeMap<u64, SocketAddr>) -> Transport {
        let mut senders = BTreeMap::new();
        for (&peer, &addr) in peers {
            if peer == node_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
            tokio::spawn(run_sender(node_id, peer, addr, rx));
            senders.insert(peer, tx);
        }
        Transport {
            node_id,
            peers: senders,
            dropped_batches: Arc::default(),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Queues a batch for `to`; drops it if the queue is full or the peer unknown.
    pub fn send(&self, to: u64, batch: Vec<GroupMessage>) {
        let queued = self
            .peers
            .get(&to)
            .map(|tx| tx.try_send(batch).is_ok())
            .unwrap_or(false);
        if !queued {
            self.dropped_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped_batches(&self) -> u64 {
        self.dropped_batches.load(Ordering::Relaxed)
    }
}

async fn run_sender(
    from: u64,
    peer: u64,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Vec<GroupMessage>>,
) {
    let mut backoff_ms = BACKOFF_MIN_MS;
    let mut was_connected = true;
    loop {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => {
                if !was_connected {
                    tracing::info!(peer, %addr, "connected to peer");
                }
                was_connected = true;
                backoff_ms = BACKOFF_MIN_MS;
                stream
            }
            Err(e) => {
                if was_connected {
                    tracing::warn!(peer, %addr, error = %e, "cannot reach peer; retrying with backoff");
                }
                was_connected = false;
                // Messages for an unreachable peer are stale by the time it is back.
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                continue;
            }
        };
        loop {
            let Some(batch) = queue.recv().await else {
                return;
            };
            let frame = match encode_frame(from, &batch) {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::error!(peer, error = %e, "dropping a batch that cannot be framed");
                    continue;
                }
            };
            if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
                break; // reconnect
            }
        }
    }
}

/// Inbound side: accepts peer connections and forwards every decoded batch to `inbox`.
pub async fn serve_peers(listener: TcpListener, inbox: mpsc::Sender<(u64, Vec<GroupMessage>)>) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            continue;
        };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let body = match read_frame(&mut stream).await {
                    Ok(Some(body)) => body,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "closing peer connection");
                        return;
                    }
                };
                match decode_frame(&body) {
                    Ok(batch) => {
                        if inbox.send(batch).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "closing peer connection");
                        return;
                    }
                }
            }
        });
    }
}
