//! Kafka framing: a 4-byte big-endian size, then that many bytes. Sizes are bounded
//! by `socket.request.max.bytes`; a bad size closes the connection.

use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads one frame. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_size_bytes: usize,
) -> io::Result<Option<Bytes>> {
    let mut size_buf = [0u8; 4];
    match reader.read_exact(&mut size_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let size = i32::from_be_bytes(size_buf);
    if size < 0 || size as usize > max_size_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame size {size} outside 0..={max_size_bytes}"),
        ));
    }
    let mut frame = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame.freeze()))
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> io::Result<()> {
    let size = i32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    writer.write_all(&size.to_be_bytes()).await?;
    writer.write_all(body).await?;
    writer.flush().await
}
