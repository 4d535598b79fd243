//! QUIC endpoints over UDP sockets that may carry datagrams larger than Ethernet's.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;

/// Largest UDP payload one `sendmsg` may carry, segmented or not (IPv4: 65,535 less the IP and
/// UDP headers).
const MAX_SEND: usize = 65_507;

/// The largest UDP payload Sluice's QUIC sends and accepts, and the ceiling of quinn's path MTU
/// discovery. quinn's default, 1452, fits Ethernet. Discovery climbs only as far as the path
/// carries, so an Ethernet path still ends at 1452, a jumbo-frame one near 9,000 and loopback
/// here. On loopback 16 KiB moved a bulk copy at 1.5-1.7x the rate of 1452 for about half the
/// CPU per GiB (docs/design.md).
pub const MAX_UDP_PAYLOAD: u16 = 16 * 1024;

/// quinn's congestion window before the first acknowledgement, in bytes (quinn's default is
/// 14,720). Right after the handshake quinn's MTU discovery sends probes of up to
/// [`MAX_UDP_PAYLOAD`] (8.8 and 12.6 KB on loopback), which count against the window. With
/// 14,720 bytes `connect` took over 20 ms to "Proxy listening" in 22 to 29 of each 40 starts
/// (p50 33-36 ms), against at most 13.4 ms with 64 KiB; most likely the session's first bytes
/// (the token, the worker's answer) waited behind the probes. This leaves room for a probe, a
/// full datagram and the packet being built.
/// quinn's pacer bursts window × 2 ms / RTT (at least 10 datagrams; read in its source), so on
/// a path with a round trip of 9 ms or more a new connection sends 10 datagrams at a time, not
/// the window at once.
pub const INITIAL_WINDOW: u64 = 64 * 1024;

/// A QUIC endpoint on `socket` (bound with [`crate::net::bind_udp`]) that accepts datagrams up
/// to [`MAX_UDP_PAYLOAD`] and never hands the kernel a send it must refuse.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let inner: Arc<dyn AsyncUdpSocket> = Arc::new(Socket::new(socket)?);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(io::Error::other)?;
    quinn::Endpoint::new_with_abstract_socket(
        config,
        server,
        Arc::new(SplitSends::new(inner)),
        runtime,
    )
}

/// quinn's Tokio socket (`quinn::TokioRuntime::wrap_udp_socket`), except that a receive which
/// comes back with fewer datagrams than it asked for marks the socket as drained.
///
/// quinn's endpoint reads until a receive answers "would block", so every wake-up of a QUIC
/// endpoint ended with one `recvmmsg` that found nothing: in a 64-byte ping-pong through the
/// full path, 2 of the 4 receive calls per round trip (one on each side). A `recvmmsg` on a
/// non-blocking socket stops at the first datagram it does not find, so a short count already
/// says the queue was empty, as a short `read` does for Tokio's own TCP streams, which clear
/// their readiness the same way. A datagram that arrives after that call raises a new
/// (edge-triggered) event, so it is not stranded.
#[derive(Debug)]
struct Socket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
}

impl Socket {
    fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        Ok(Self {
            state: UdpSocketState::new((&socket).into())?,
            io: tokio::net::UdpSocket::from_std(socket)?,
        })
    }
}

impl AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            waiting: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // `recvmmsg` is asked for this many datagrams (quinn-udp's batch).
        let asked = bufs.len().min(quinn::udp::BATCH_SIZE);
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let mut received = None;
            // Answering "would block" after a short receive is what clears the readiness
            // (`try_io` does it only then); the datagrams received are returned all the same.
            let _ = self.io.try_io(Interest::READABLE, || {
                let n = self.state.recv((&self.io).into(), bufs, meta)?;
                received = Some(n);
                if n < asked {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            if let Some(n) = received {
                return Poll::Ready(Ok(n));
            }
            // Nothing there (the readiness is cleared, and the next poll waits for a new
            // event), or an error that the call consumed: as quinn does, try again.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// Waits until [`Socket`] is writable, for quinn's connections: each has its own, so each
/// waits with its own waker (Tokio keeps one waker per `poll_send_ready`, but any number of
/// `writable()` futures).
struct Writable {
    socket: Arc<Socket>,
    waiting: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // quinn asks before every send, and the socket is nearly always writable: answer that
        // without allocating a future. The no-op waker is never needed: nothing waits through
        // `poll_send_ready` on this socket, and a socket that is not writable is waited for
        // below, with this connection's own waker.
        if this.waiting.is_none() {
            let mut probe = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(result) = this.socket.io.poll_send_ready(&mut probe) {
                return Poll::Ready(result);
            }
        }
        let waiting = this.waiting.get_or_insert_with(|| {
            let socket = this.socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let result = waiting.as_mut().poll(cx);
        if result.is_ready() {
            this.waiting = None;
        }
        result
    }
}

/// Sends a segmented transmit that is over [`MAX_SEND`] in several `sendmsg` calls.
///
/// quinn puts up to 10 datagrams of the path's MTU into one transmit. With datagrams over
/// 6.5 KB that is more than one `sendmsg` may carry; the kernel refuses it (EMSGSIZE) and
/// quinn-udp drops it without a word (quinn issue 2201, open), so every such transmit was lost.
/// That is why a larger MTU measured slower here before (docs/design.md).
///
/// When the socket fills between two parts, the call answers "would block" and quinn offers
/// the same transmit again once the socket is writable. The parts that already went out are
/// remembered (per destination, by the transmit's length and first bytes, which hold a packet
/// number and ciphertext) and not sent twice.
struct SplitSends {
    inner: Arc<dyn AsyncUdpSocket>,
    partial: Mutex<Vec<Partial>>,
}

/// A transmit of which only the first `sent` bytes went out.
struct Partial {
    destination: SocketAddr,
    len: usize,
    head: [u8; HEAD],
    sent: usize,
}

/// How many leading bytes of a transmit identify it when it is offered again.
const HEAD: usize = 64;

/// Transmits remembered at most (one per connection whose send is waiting); past that the
/// oldest is forgotten, and its parts would be sent again (the peer drops repeated packets).
const MAX_PARTIAL: usize = 64;

impl SplitSends {
    fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        Self {
            inner,
            partial: Mutex::new(Vec::new()),
        }
    }
}

fn head(contents: &[u8]) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    let n = contents.len().min(HEAD);
    h[..n].copy_from_slice(&contents[..n]);
    h
}

impl fmt::Debug for SplitSends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl AsyncUdpSocket for SplitSends {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment) = transmit
            .segment_size
            .filter(|_| transmit.contents.len() > MAX_SEND)
        else {
            return self.inner.try_send(transmit);
        };
        let per_send = (MAX_SEND / segment).max(1) * segment;
        let contents = transmit.contents;
        let key = head(contents);
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        let known = partial.iter().position(|p| {
            p.destination == transmit.destination && p.len == contents.len() && p.head == key
        });
        let mut sent = known.map_or(0, |i| partial[i].sent);
        while sent < contents.len() {
            let part = &contents[sent..(sent + per_send).min(contents.len())];
            match self.inner.try_send(&Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: part,
                segment_size: (part.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            }) {
                Ok(()) => sent += part.len(),
                Err(e) => {
                    // "Would block": quinn offers the same transmit again once the socket is
                    // writable. Any other error ends it.
                    let offered_again = e.kind() == io::ErrorKind::WouldBlock;
                    match known {
                        Some(i) if offered_again => partial[i].sent = sent,
                        Some(i) => {
                            partial.remove(i);
                        }
                        None if offered_again && sent > 0 => {
                            if partial.len() == MAX_PARTIAL {
                                partial.remove(0);
                            }
                            partial.push(Partial {
                                destination: transmit.destination,
                                len: contents.len(),
                                head: key,
                                sent,
                            });
                        }
                        None => {}
                    }
                    return Err(e);
                }
            }
        }
        if let Some(i) = known {
            partial.remove(i);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::Runtime;
    use std::time::Duration;

    /// Receives from `socket` until `count` datagrams have come, each wait bounded; returns
    /// each datagram's first byte in order of arrival.
    async fn receive(socket: &Socket, count: usize) -> Vec<u8> {
        let mut storage = vec![[0u8; 2048]; quinn::udp::BATCH_SIZE];
        let mut first_bytes = Vec::new();
        while first_bytes.len() < count {
            let mut bufs: Vec<io::IoSliceMut> =
                storage.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
            let mut meta = vec![RecvMeta::default(); bufs.len()];
            let n = tokio::time::timeout(
                Duration::from_secs(5),
                std::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta)),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {count} datagrams received; the rest waited in the socket",
                    first_bytes.len()
                )
            })
            .unwrap();
            for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                // Datagrams coalesced by the kernel (GRO) arrive as one message of `stride`
                // sized segments.
                let stride = meta.stride.max(1);
                first_bytes.extend(buf[..meta.len].chunks(stride).map(|d| d[0]));
            }
        }
        first_bytes
    }

    /// A receive that takes every datagram queued marks the socket drained, so that quinn's
    /// next poll makes no call that finds nothing. That must never leave datagrams behind: not
    /// when more are queued than one receive takes, and not when one arrives after the socket
    /// was marked drained.
    #[tokio::test]
    async fn a_drained_socket_still_receives_every_datagram() {
        let receiver = crate::net::loopback_udp();
        let to = receiver.local_addr().unwrap();
        let socket = Socket::new(receiver).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // More than one `recvmmsg` takes: the first receive comes back full, and the socket
        // must not be taken for drained.
        let queued = quinn::udp::BATCH_SIZE + 8;
        for i in 0..queued {
            sender.send_to(&[i as u8; 100], to).unwrap();
        }
        let expected: Vec<u8> = (0..queued).map(|i| i as u8).collect();
        assert_eq!(receive(&socket, queued).await, expected);
        // The last receive was short, so the socket is marked drained. A datagram sent now
        // arrives all the same, and so does one sent while quinn is already waiting.
        sender.send_to(&[200; 100], to).unwrap();
        assert_eq!(receive(&socket, 1).await, [200]);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send_to(&[201; 100], to).unwrap();
        });
        assert_eq!(receive(&socket, 1).await, [201]);
        late.await.unwrap();
    }

    /// Ten 9,000-byte datagrams in one segmented transmit are 90,000 bytes, more than one
    /// `sendmsg` may carry: sent as they are, the kernel refuses all ten (and quinn-udp drops
    /// them without a word); through `SplitSends` all ten arrive, whole and in order.
    #[tokio::test]
    async fn a_segmented_send_larger_than_one_sendmsg_arrives_whole() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let sender = crate::net::loopback_udp();
        let inner = quinn::TokioRuntime.wrap_udp_socket(sender).unwrap();
        assert!(
            inner.max_transmit_segments() >= 10,
            "this test needs UDP segmentation offload on loopback"
        );
        let contents: Vec<u8> = (0..10u8).flat_map(|i| [i; 9_000]).collect();
        let transmit = Transmit {
            destination: receiver.local_addr().unwrap(),
            ecn: None,
            contents: &contents,
            segment_size: Some(9_000),
            src_ip: None,
        };
        let mut buf = vec![0u8; 65_536];

        send(&inner, &transmit).await;
        assert!(
            receiver.recv(&mut buf).is_err(),
            "the kernel took a 90,000-byte send; the split is not needed here"
        );

        let split: Arc<dyn AsyncUdpSocket> = Arc::new(SplitSends::new(inner));
        send(&split, &transmit).await;
        for i in 0..10u8 {
            let n = receiver
                .recv(&mut buf)
                .expect("a datagram of the split send");
            assert_eq!(n, 9_000, "datagram {i}");
            assert!(
                buf[..n].iter().all(|b| *b == i),
                "datagram {i} holds its own bytes"
            );
        }
    }

    /// A socket whose sends succeed except those numbered in `refuse` (counted from 0), which
    /// answer "would block" as a full socket does; it keeps what it sent. A real UDP socket on
    /// loopback does not fill between two calls on demand.
    #[derive(Debug, Default)]
    struct Filling {
        calls: Mutex<usize>,
        refuse: Vec<usize>,
        sent: Mutex<Vec<u8>>,
    }

    #[derive(Debug)]
    struct Writable;

    impl UdpPoller for Writable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Filling {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(Writable)
        }
        fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
            let mut calls = self.calls.lock().unwrap();
            let call = *calls;
            *calls += 1;
            if self.refuse.contains(&call) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            assert!(
                transmit.contents.len() <= MAX_SEND,
                "one sendmsg carries at most 64 KB"
            );
            self.sent
                .lock()
                .unwrap()
                .extend_from_slice(transmit.contents);
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context,
            _: &mut [io::IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok("127.0.0.1:1".parse().unwrap())
        }
    }

    /// When the socket fills after the first part of a split transmit, quinn offers the whole
    /// transmit again; only the parts not yet sent go out then, and a different transmit in
    /// between is sent whole.
    #[tokio::test]
    async fn a_split_send_interrupted_by_a_full_socket_sends_no_part_twice() {
        // Calls: 0 first part of `a`; 1 refused; 2 `b` alone, refused; 3-4 `b`; 5 refused
        // again (nothing new of `a` goes); 6 the rest of `a`.
        let inner = Arc::new(Filling {
            refuse: vec![1, 2, 5],
            ..Filling::default()
        });
        let split: Arc<dyn AsyncUdpSocket> = Arc::new(SplitSends::new(inner.clone()));
        let to = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let a: Vec<u8> = (0..10u8).flat_map(|i| [i; 9_000]).collect();
        let b: Vec<u8> = (0..8u8).flat_map(|i| [100 + i; 9_000]).collect();
        let transmit = |contents, port| Transmit {
            destination: to(port),
            ecn: None,
            contents,
            segment_size: Some(9_000),
            src_ip: None,
        };
        let would_block = |r: io::Result<()>| {
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        };
        would_block(split.try_send(&transmit(&a, 1)));
        assert_eq!(
            inner.sent.lock().unwrap().len(),
            63_000,
            "a's first part went"
        );
        would_block(split.try_send(&transmit(&b, 2)));
        split.try_send(&transmit(&b, 2)).unwrap();
        would_block(split.try_send(&transmit(&a, 1)));
        split.try_send(&transmit(&a, 1)).unwrap();
        let mut want = a[..63_000].to_vec();
        want.extend_from_slice(&b);
        want.extend_from_slice(&a[63_000..]);
        assert!(
            *inner.sent.lock().unwrap() == want,
            "every datagram went exactly once"
        );
        // Sent in full, `a` is forgotten: the same bytes offered again are a new transmit.
        split.try_send(&transmit(&a, 1)).unwrap();
        assert_eq!(inner.sent.lock().unwrap().len(), want.len() + a.len());
    }

    /// Sends as quinn does: waits until the socket is writable, then tries.
    async fn send(socket: &Arc<dyn AsyncUdpSocket>, transmit: &Transmit<'_>) {
        let mut poller = socket.clone().create_io_poller();
        loop {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
            match socket.try_send(transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other.unwrap(),
            }
        }
    }

    /// A QUIC connection on loopback discovers datagrams larger than Ethernet's and carries a
    /// bulk copy in them without losing packets to refused sends.
    #[tokio::test]
    async fn a_loopback_connection_moves_bulk_in_large_datagrams_without_losses() {
        let (_s, _c, worker, client) = crate::quic::loopback_pair(
            crate::quic::transport_config(false),
            crate::quic::transport_config(true),
        )
        .await;
        const BYTES: usize = 32 << 20;
        let reader = tokio::spawn(async move {
            let (_send, mut recv) = worker.accept_bi().await.unwrap();
            let got = recv.read_to_end(BYTES + 1).await.unwrap();
            (got.len(), worker)
        });
        let (mut send, _recv) = client.open_bi().await.unwrap();
        let chunk = vec![0x5a; 1 << 20];
        for _ in 0..BYTES / chunk.len() {
            send.write_all(&chunk).await.unwrap();
        }
        send.finish().unwrap();
        let (got, _worker) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the copy finished within a minute")
            .unwrap();
        assert_eq!(got, BYTES);
        let path = client.stats().path;
        assert!(
            path.current_mtu > 9_000,
            "path MTU {} after 32 MiB on loopback",
            path.current_mtu
        );
        assert!(
            path.lost_packets * 100 <= path.sent_packets,
            "{} of {} packets lost",
            path.lost_packets,
            path.sent_packets
        );
    }
}
