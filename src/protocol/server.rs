//! The TCP server: accepts connections (bounded), and per connection reads request
//! frames, dispatches them in order, and writes responses in the same order.
//!
//! Requests are handled one after another, so appends from one connection happen in
//! the order they were sent; a reply that must wait (an fsync, a long-poll) is queued
//! and the next request is read meanwhile, up to `max_in_flight_requests_per_connection`.
//! A malformed frame closes that connection only, with one log line.

use super::dispatch::{dispatch_from, encode_response, PendingResponse, Reply};
use super::frame::{read_frame, write_frame};
use crate::broker::Broker;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Accepts connections until the task is dropped.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(broker.config.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections; refusing one");
            drop(stream);
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            serve_connection(broker, stream, peer).await;
            drop(permit);
        });
    }
}

/// Serves one client connection until it closes or misbehaves.
pub async fn serve_connection(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (queue, mut responses) =
        mpsc::channel::<PendingResponse>(broker.config.max_in_flight_requests_per_connection);
    let writer_task = tokio::spawn(async move {
        while let Some(pending) = responses.recv().await {
            let response = match pending.reply {
                Reply::Now(r) => r,
                Reply::Later(future) => future.await,
                Reply::Nothing => continue,
            };
            let body = match encode_response(
                pending.correlation_id,
                pending.api_key,
                pending.version,
                &response,
            ) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(%peer, api = ?pending.api_key, version = pending.version, error = %e, "could not encode a response; closing");
                    return;
                }
            };
            if write_frame(&mut writer, &body).await.is_err() {
                return;
            }
        }
    });
    let max_frame_bytes = broker.config.socket_request_max_bytes;
    loop {
        let frame = match read_frame(&mut reader, max_frame_bytes).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    tracing::warn!(%peer, error = %e, "closing connection: bad frame");
                }
                break;
            }
        };
        match dispatch_from(&broker, frame, Some(peer)).await {
            Ok(pending) => {
                if queue.send(pending).await.is_err() {
                    break; // the writer stopped: the peer is gone
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
                break;
            }
        }
    }
    drop(queue);
    let _ = writer_task.await;
}
