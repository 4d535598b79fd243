//! quinn's Cubic congestion control, with a window that opens once the connection closes, so
//! that the close always leaves.
//!
//! quinn 0.11 builds a connection's CONNECTION_CLOSE in the same loop as its data, behind the
//! same congestion check: while stream data is still queued and the window is used up, the
//! close is not sent. Once closed, the connection processes no acknowledgements, so the window
//! never frees, and its loss timers are stopped (quinn issue 2785; fixed upstream in PR 2787,
//! in no release up to quinn-proto 0.11.19: once one carries it, this module can go). The
//! peer learns nothing until its idle timeout, or gets a stateless reset: a canceled
//! session's user could see "reset by peer" instead of "Session was canceled", and refused
//! tokens did arrive that way when an MTU probe filled quinn's initial window.
//!
//! [`close`] is how Sluice closes a QUIC connection: it opens the window first. A closed
//! connection sends nothing but its close, so the only packet this lets past the congestion
//! check is that one.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Closes `conn` with `code` and `reason`, opening its congestion window first so that the
/// close is sent even when the window is full of unacknowledged data.
pub fn close(conn: &quinn::Connection, code: quinn::VarInt, reason: &[u8]) {
    // `congestion_state` is a copy of the controller; the flag inside is shared with the one
    // quinn uses.
    if let Ok(c) = conn
        .congestion_state()
        .into_any()
        .downcast::<ClosingCubic>()
    {
        c.closing.store(true, Ordering::Relaxed);
    }
    conn.close(code, reason);
}

/// Builds [`ClosingCubic`] controllers from a Cubic configuration.
pub struct ClosingCubicFactory(pub Arc<CubicConfig>);

impl ControllerFactory for ClosingCubicFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(ClosingCubic {
            inner: self.0.clone().build(now, current_mtu),
            closing: Arc::default(),
        })
    }
}

/// Cubic, until [`close`] sets `closing`; from then on an unlimited window.
struct ClosingCubic {
    inner: Box<dyn Controller>,
    closing: Arc<AtomicBool>,
}

impl Controller for ClosingCubic {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        if self.closing.load(Ordering::Relaxed) {
            // quinn's pacer also stands aside for a window this large.
            u64::MAX
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(ClosingCubic {
            inner: self.inner.clone_box(),
            closing: self.closing.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::{loopback_configs, transport_config};
    use crate::tls::WORKER_SERVER_NAME;
    use std::time::Duration;

    const CODE: u32 = 0x5c;

    /// A worker closes a connection whose congestion window is full of data its client has not
    /// acknowledged: its client is frozen (its runtime's thread sleeps, so nothing reads its
    /// socket or sends acknowledgements), the worker closes, and the client thaws. The client
    /// must see the worker's close code. With quinn's own controller the close never leaves,
    /// and the client sees a stateless reset or its idle timeout instead.
    #[test]
    fn a_close_while_the_window_is_full_reaches_the_peer_with_its_code() {
        close_with_a_full_window(Closer::Worker);
    }

    /// The same from the other side: `connect` ends the session (its user stopped it) in the
    /// middle of an upload the worker has not acknowledged, and the worker must hear the
    /// client's close, or it would end the session only at its idle timeout, as a network
    /// error.
    #[test]
    fn a_client_close_while_its_window_is_full_reaches_the_worker() {
        close_with_a_full_window(Closer::Client);
    }

    enum Closer {
        Worker,
        Client,
    }

    /// Connects a client and a worker (each with Sluice's transport configuration) over
    /// loopback. The side that does not close runs on its own thread and runtime, so that it
    /// can be frozen. The closing side sends bulk data, freezes its peer, waits until its
    /// window stops it sending, closes with [`CODE`], and checks what its peer saw on thawing.
    fn close_with_a_full_window(closer: Closer) {
        let (server_cfg, client_cfg) =
            loopback_configs(transport_config(false), transport_config(true));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        // Bound here, so both sides know the worker's address before either starts; the side
        // given the socket is the worker.
        let worker_socket = crate::net::loopback_udp();
        let worker_addr = worker_socket.local_addr().unwrap();
        let (main_socket, peer_socket) = match closer {
            Closer::Worker => (Some(worker_socket), None),
            Closer::Client => (None, Some(worker_socket)),
        };
        let (freeze_tx, freeze_rx) = std::sync::mpsc::channel::<Duration>();
        let (ended_tx, ended_rx) = std::sync::mpsc::channel::<quinn::ConnectionError>();
        let (peer_server_cfg, peer_client_cfg) = (server_cfg.clone(), client_cfg.clone());

        let peer = std::thread::spawn(move || {
            runtime().block_on(async move {
                let (conn, send, mut recv, _ep) =
                    open(peer_socket, peer_server_cfg, peer_client_cfg, worker_addr).await;
                tokio::spawn(async move {
                    while let Ok(Some(_)) = recv.read_chunk(1 << 20, true).await {}
                });
                // Freezing blocks this thread, and with it everything on this runtime.
                let freeze = tokio::task::spawn_blocking(move || freeze_rx.recv());
                tokio::select! {
                    e = conn.closed() => { let _ = ended_tx.send(e); return; }
                    f = freeze => std::thread::sleep(f.unwrap().unwrap()),
                }
                let e = tokio::time::timeout(Duration::from_secs(20), conn.closed())
                    .await
                    .expect("the connection ended within 20 s");
                let _ = ended_tx.send(e);
                drop(send);
            });
        });

        runtime().block_on(async {
            let (conn, mut send, _recv, _ep) = tokio::time::timeout(
                Duration::from_secs(10),
                open(main_socket, server_cfg, client_cfg, worker_addr),
            )
            .await
            .expect("the client connected and opened a stream within 10 s");
            let chunk = bytes::Bytes::from(vec![0x5a; 1 << 20]);
            tokio::spawn(async move { while send.write_chunk(chunk.clone()).await.is_ok() {} });
            // Freeze the peer as soon as data flows, while the window is smaller than the
            // stream's flow-control window (8 MiB): then the window is what holds data back.
            // The freeze is longer than it takes to fill the window and shorter than the
            // closing side's close period (3 probe timeouts, each 25 ms or more).
            freeze_tx.send(Duration::from_millis(60)).unwrap();
            // Full: nothing more goes out while the peer is frozen.
            let mut sent = conn.stats().udp_tx.bytes;
            let give_up = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let now = conn.stats().udp_tx.bytes;
                if now == sent {
                    break;
                }
                assert!(
                    std::time::Instant::now() < give_up,
                    "still sending 10 s after the peer froze"
                );
                sent = now;
            }
            close(&conn, CODE.into(), b"test close");
            // Keep this endpoint running while the peer thaws and reads.
            let ended =
                tokio::task::spawn_blocking(move || ended_rx.recv_timeout(Duration::from_secs(30)))
                    .await
                    .unwrap()
                    .expect("the peer reported how its connection ended");
            match ended {
                quinn::ConnectionError::ApplicationClosed(c) => {
                    assert_eq!(c.error_code, CODE.into(), "close code");
                }
                other => panic!("the peer saw {other:?}, not the close"),
            }
        });
        peer.join().unwrap();
    }

    type Side = (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        quinn::Endpoint,
    );

    /// One side of the connection: the worker on `worker_socket` when given it, otherwise a
    /// client of the worker at `worker_addr`.
    async fn open(
        worker_socket: Option<std::net::UdpSocket>,
        server_cfg: quinn::ServerConfig,
        client_cfg: quinn::ClientConfig,
        worker_addr: std::net::SocketAddr,
    ) -> Side {
        match worker_socket {
            Some(socket) => {
                worker_side(crate::quic::udp::endpoint(socket, Some(server_cfg)).unwrap()).await
            }
            None => client_side(client_cfg, worker_addr).await,
        }
    }

    /// Connects a client to the worker at `worker_addr` and opens a stream with two bytes on it.
    async fn client_side(cfg: quinn::ClientConfig, worker_addr: std::net::SocketAddr) -> Side {
        let mut client = crate::quic::udp::endpoint(crate::net::loopback_udp(), None).unwrap();
        client.set_default_client_config(cfg);
        let conn = client
            .connect(worker_addr, WORKER_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"go").await.unwrap();
        (conn, send, recv, client)
    }

    /// Accepts the client's connection and its stream, and reads the stream's two bytes.
    async fn worker_side(worker: quinn::Endpoint) -> Side {
        let conn = worker.accept().await.unwrap().await.unwrap();
        let (send, mut recv) = conn.accept_bi().await.unwrap();
        let mut go = [0u8; 2];
        recv.read_exact(&mut go).await.unwrap();
        (conn, send, recv, worker)
    }
}
