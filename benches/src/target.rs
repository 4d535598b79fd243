//! The harness's own target server: the first byte of a connection picks its behaviour.
//! `E`: echo everything back. `S`: sink everything, then answer the byte count (u64 BE).
//! `D` and a count (u64 BE): send that many bytes, then close (a download).
//!
//! Threads wait in `accept` themselves, a few spare at all times, and each serves the
//! connection it accepted. Until 2026-12-01 one thread accepted and started a new thread per
//! connection: every new connection, direct or proxied, then waited for a thread to be created
//! (and its 256 KiB buffer mapped) before its first byte was read, a cost of the target's, not
//! of the path measured (docs/design.md).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Threads waiting in `accept` when none is serving; one more is started whenever fewer
/// are left waiting, and a thread whose connection ended leaves when more than
/// [`MAX_SPARE`] are.
const SPARE: usize = 4;
const MAX_SPARE: usize = 16;

/// The buffer each thread reads into.
const BUF: usize = 256 * 1024;

/// Starts the server on a free loopback port; it runs until the process exits.
pub fn start() -> std::io::Result<u16> {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0")?);
    let port = listener.local_addr()?.port();
    let waiting = Arc::new(AtomicUsize::new(0));
    for _ in 0..SPARE {
        acceptor(&listener, &waiting);
    }
    Ok(port)
}

/// Starts a thread that accepts connections and serves each itself.
fn acceptor(listener: &Arc<TcpListener>, waiting: &Arc<AtomicUsize>) {
    let (listener, waiting) = (listener.clone(), waiting.clone());
    // Counted before it runs, so a burst of accepts does not start a thread per connection.
    waiting.fetch_add(1, Ordering::SeqCst);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; BUF];
        loop {
            let conn = listener.accept();
            if waiting.fetch_sub(1, Ordering::SeqCst) <= SPARE {
                acceptor(&listener, &waiting);
            }
            match conn {
                Ok((conn, _)) => serve(conn, &mut buf),
                // Out of descriptors, say: wait rather than spin.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
            if waiting.fetch_add(1, Ordering::SeqCst) >= MAX_SPARE {
                waiting.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    });
}

fn serve(mut c: TcpStream, buf: &mut [u8]) {
    let _ = c.set_nodelay(true);
    let mut mode = [0u8; 1];
    if c.read_exact(&mut mode).is_err() {
        return;
    }
    match mode[0] {
        b'E' => loop {
            match c.read(buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        },
        b'S' => {
            let mut total = 0u64;
            loop {
                match c.read(buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = c.write_all(&total.to_be_bytes());
        }
        b'D' => {
            let mut count = [0u8; 8];
            if c.read_exact(&mut count).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(count);
            buf.fill(0x5a);
            while left > 0 {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dial(port: u16) -> TcpStream {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Many more connections open at once than threads wait spare: each is served while
    /// all the others stay open (the idle-connection stage holds 10,000).
    #[test]
    fn serves_every_open_connection_at_once() {
        let port = start().unwrap();
        let mut open: Vec<TcpStream> = (0..10 * SPARE).map(|_| dial(port)).collect();
        for (i, c) in open.iter_mut().enumerate() {
            c.write_all(&[b'E', i as u8]).unwrap();
        }
        for (i, c) in open.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8, "connection {i} echoes its own byte");
        }
        // Served connections free their threads for the next ones.
        drop(open);
        for i in 0..100u8 {
            let mut c = dial(port);
            c.write_all(&[b'E', i]).unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i);
        }
    }

    #[test]
    fn a_download_sends_the_bytes_asked_for_then_closes() {
        let port = start().unwrap();
        for want in [0u64, 1, 300_000, 3 << 20] {
            let mut c = dial(port);
            c.write_all(b"D").unwrap();
            c.write_all(&want.to_be_bytes()).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got.len() as u64, want);
            assert!(got.iter().all(|&b| b == 0x5a));
        }
    }

    #[test]
    fn a_sink_answers_the_byte_count() {
        let port = start().unwrap();
        let mut c = dial(port);
        c.write_all(b"S").unwrap();
        c.write_all(&vec![7u8; 3 * BUF + 5]).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut n = [0u8; 8];
        c.read_exact(&mut n).unwrap();
        assert_eq!(u64::from_be_bytes(n), 3 * BUF as u64 + 5);
    }
}
