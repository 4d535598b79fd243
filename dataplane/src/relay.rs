//! Moving bytes between a QUIC stream and a TCP socket, in both directions at once.
//!
//! QUIC → TCP hands quinn's received `Bytes` chunks straight to the socket; TCP → QUIC reads
//! into a buffer that is frozen and handed to quinn as an owned chunk. Neither direction copies
//! in user space beyond the one read the socket API needs.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READ_CHUNK: usize = 64 * 1024;

/// Byte counts of a relay, readable while it runs and after it is dropped.
#[derive(Debug, Default)]
pub struct Counts {
    /// Bytes from the QUIC stream to the TCP socket.
    pub quic_to_tcp: AtomicU64,
    /// Bytes from the TCP socket to the QUIC stream.
    pub tcp_to_quic: AtomicU64,
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides finished their byte streams.
    Done,
    /// One side failed or reset; the other was torn down.
    Failed(String),
}

/// Relays until both directions are finished or one fails. `early` holds bytes already read
/// from the QUIC stream (sent right behind its header) and goes to the socket first.
pub async fn relay(
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    early: Bytes,
    counts: &Counts,
) -> Outcome {
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let to_tcp = async {
        if !early.is_empty() {
            tw.write_all(&early)
                .await
                .map_err(|e| format!("write to socket: {e}"))?;
            counts
                .quic_to_tcp
                .fetch_add(early.len() as u64, Ordering::Relaxed);
        }
        loop {
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => {
                    tw.write_all(&chunk.bytes)
                        .await
                        .map_err(|e| format!("write to socket: {e}"))?;
                    counts
                        .quic_to_tcp
                        .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                }
                Ok(None) => {
                    let _ = tw.shutdown().await;
                    return Ok::<_, String>(());
                }
                Err(e) => return Err(format!("read from stream: {e}")),
            }
        }
    };
    let to_quic = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            if buf.capacity() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let n = tr
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("read from socket: {e}"))?;
            if n == 0 {
                let _ = send.finish();
                return Ok::<_, String>(());
            }
            send.write_chunk(buf.split().freeze())
                .await
                .map_err(|e| format!("write to stream: {e}"))?;
            counts.tcp_to_quic.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let result = tokio::try_join!(to_tcp, to_quic);
    match result {
        Ok(_) => Outcome::Done,
        Err(e) => {
            let _ = send.reset(0u32.into());
            let _ = recv.stop(0u32.into());
            Outcome::Failed(e)
        }
    }
}
