//! Per-thread pool of copy buffers for the legs that must pass bytes through user space (TLS).
//!
//! A buffer is taken only once a read has data for it and goes back as soon as the bytes are
//! written, so an idle connection holds none (10,000 idle TLS connections would otherwise pin
//! 1.25 GiB of 64 KiB buffers) and a busy thread reuses the same few warm buffers instead of
//! allocating per connection.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes per buffer: one TLS record is at most 16 KiB, and 64 KiB reads measured best for
/// read/write forwarders here (PERF.md).
pub(crate) const BUFFER_SIZE: usize = 64 * 1024;
/// Buffers a thread keeps for reuse; more than this are freed when returned.
const KEEP_PER_THREAD: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer on loan from this thread's pool; dropping it gives it back.
pub(crate) struct PooledBuf(Option<Box<[u8]>>);

impl PooledBuf {
    pub(crate) fn take() -> Self {
        let buf = FREE
            .with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        Self(Some(buf))
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // During thread teardown the pool may already be gone; the buffer is then freed.
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < KEEP_PER_THREAD {
                    f.push(buf);
                }
            });
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

/// Waits until `r` has bytes (or end of stream), and only then takes a buffer for them.
/// Returns the buffer and the byte count; 0 means end of stream.
pub(crate) async fn read_pooled<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<(PooledBuf, usize)> {
    std::future::poll_fn(|cx| {
        let mut buf = PooledBuf::take();
        let n = {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                // Pending puts nothing in the buffer: it goes straight back to the pool.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => rb.filled().len(),
            }
        };
        Poll::Ready(Ok((buf, n)))
    })
    .await
}

/// Copies `r` to `w` until end of stream (then shuts `w` down), counting bytes as they move.
pub(crate) async fn copy_pooled<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    count: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    loop {
        let (buf, n) = read_pooled(r).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        drop(buf);
        w.flush().await?;
        count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_and_buffers_are_reused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        FREE.with(|f| f.borrow_mut().clear());
        let reader = tokio::spawn(async move {
            let (buf, n) = read_pooled(&mut b).await.unwrap();
            let first = buf[..n].to_vec();
            drop(buf);
            let pooled_after = FREE.with(|f| f.borrow().len());
            (first, pooled_after)
        });
        // The reader is parked on an empty pipe: the buffer it tried went back.
        tokio::task::yield_now().await;
        a.write_all(b"hello").await.unwrap();
        let (first, pooled_after) = reader.await.unwrap();
        assert_eq!(first, b"hello");
        assert_eq!(
            pooled_after, 1,
            "the one buffer is back in the pool, not freed"
        );
    }

    #[tokio::test]
    async fn copies_everything_and_shuts_down_the_writer() {
        use std::sync::atomic::AtomicU64;
        use tokio::io::AsyncReadExt;
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut src_w, mut src_r) = tokio::io::duplex(4096);
        let (mut dst_w, mut dst_r) = tokio::io::duplex(4096);
        let count = AtomicU64::new(0);
        let feed = async {
            src_w.write_all(&data).await.unwrap();
            src_w.shutdown().await.unwrap();
        };
        let mut out = Vec::new();
        let (_, copied, read) = tokio::join!(
            feed,
            copy_pooled(&mut src_r, &mut dst_w, &count),
            dst_r.read_to_end(&mut out)
        );
        copied.unwrap();
        read.unwrap();
        assert_eq!(out, data);
        assert_eq!(count.into_inner(), data.len() as u64);
    }
}
