//! TCP ↔ TCP relay with `splice(2)` through a pipe per direction, driven by readiness.
//!
//! Bytes go socket → pipe → socket inside the kernel, never through user space. PERF.md: a
//! readiness-driven splice forwarder moved ~2,200 MB/s at 0.20 CPU-s/GiB here, where
//! read/write managed 1,735 MB/s at 0.55; IORING_OP_SPLICE parks two io-wq kernel threads per
//! idle connection, so readiness (epoll) drives the calls instead.
//!
//! Each direction fills its pipe from the source, then drains it completely into the
//! destination before reading again. Draining fully keeps the pipe empty whenever the source is
//! read, so an EAGAIN from the source always means "no data" and never "pipe full" (which would
//! clear the source's edge-triggered readiness while data waits).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes a pipe holds (the kernel rounds to pages; 1 MiB is the unprivileged maximum).
const PIPE_SIZE: usize = 1 << 20;

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&w),
        FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
    )
    .map(|s| s as usize)
    .unwrap_or(64 * 1024);
    Ok((r, w, size))
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Moves bytes from `src` to `dst` until end of stream, then shuts `dst` down for writing.
pub(crate) async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let (pr, pw, size) = pipe()?;
    loop {
        // Fill: the pipe is empty here.
        let n = loop {
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pw, None, size, flags()).map_err(std::io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => src.readable().await?,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return match socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() != std::io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        // Drain completely.
        let mut left = n;
        while left > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pr, None, dst, None, left, flags()).map_err(std::io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Relays between `a` and `b` until both directions reach end of stream or one fails.
/// `a_to_b` and `b_to_a` count the bytes moved each way.
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: &AtomicU64,
    b_to_a: &AtomicU64,
) -> std::io::Result<()> {
    tokio::try_join!(one_way(a, b, a_to_b), one_way(b, a, b_to_a)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn splices_both_ways_and_propagates_end_of_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // client <-> (proxy_a | proxy_b) <-> server
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taddr = target.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            got.len()
        });
        let proxy = tokio::spawn(async move {
            let (a, _) = listener.accept().await.unwrap();
            let b = TcpStream::connect(taddr).await.unwrap();
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            relay(&a, &b, &up, &down).await.unwrap();
            (up.into_inner(), down.into_inner())
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let (_, n) = tokio::join!(send, recv);
        n.unwrap();
        assert_eq!(back, data);
        assert_eq!(server.await.unwrap(), data.len());
        assert_eq!(proxy.await.unwrap(), (data.len() as u64, data.len() as u64));
    }
}
