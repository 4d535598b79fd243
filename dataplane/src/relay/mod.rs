//! Moving bytes between a QUIC stream and a TCP socket, in both directions at once.
//!
//! QUIC → TCP hands quinn's received `Bytes` chunks straight to the socket; TCP → QUIC reads
//! into a buffer that is frozen and handed to quinn as an owned chunk. Neither direction copies
//! in user space beyond the one read the socket API needs.

pub(crate) mod gate;
pub(crate) mod pool;
pub(crate) mod splice;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::diag::{now_ms, RelayProbe};
use crate::relay::gate::{SendGate, SMALL_WRITE};
use crate::relay::pool::{AheadShare, StuckWrite, READ_AHEAD_MAX};

/// Largest read handed to quinn as one chunk. 256 KiB measured ~15 % more throughput and ~15 %
/// less client CPU than 64 KiB on the full QUIC path (interleaved A/B, 4 runs each).
const READ_CHUNK: usize = 256 * 1024;
/// First read size: an interactive or idle connection never grows past it.
const FIRST_READ: usize = 16 * 1024;

/// Byte counts of a relay, readable while it runs and after it is dropped; the rest is what
/// [`crate::diag::report`] shows of a relay that has stopped moving.
#[derive(Debug, Default)]
pub struct Counts {
    /// Bytes from the QUIC stream to the TCP socket.
    pub quic_to_tcp: AtomicU64,
    /// Bytes from the TCP socket to the QUIC stream (taken by quinn).
    pub tcp_to_quic: AtomicU64,
    /// Bytes read from the socket; those beyond `tcp_to_quic` wait for quinn.
    pub(crate) read_from_tcp: AtomicU64,
    /// Bytes got from quinn for the socket; those beyond `quic_to_tcp` wait for the socket.
    pub(crate) got_from_quic: AtomicU64,
    /// Reading ahead of a write quinn has not taken for a while.
    pub(crate) reading_ahead: AtomicBool,
    /// The socket's reader sent its end.
    pub(crate) tcp_ended: AtomicBool,
    /// Everything up was handed to quinn and the stream finished.
    pub(crate) quic_finished: AtomicBool,
    /// The stream ended and the socket was shut down.
    pub(crate) tcp_shut_down: AtomicBool,
    /// When each way last moved ([`crate::diag::now_ms`]).
    pub(crate) up_moved_ms: AtomicU64,
    pub(crate) down_moved_ms: AtomicU64,
}

impl Counts {
    fn taken_by_quic(&self, n: usize) {
        self.tcp_to_quic.fetch_add(n as u64, Ordering::Relaxed);
        self.up_moved_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn written_to_tcp(&self, n: usize) {
        self.quic_to_tcp.fetch_add(n as u64, Ordering::Relaxed);
        self.down_moved_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn read_from_tcp(&self, n: usize) {
        self.read_from_tcp.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn got_from_quic(&self, n: usize) {
        self.got_from_quic.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides finished their byte streams.
    Done,
    /// One side failed or reset; the other was torn down.
    Failed(String),
}

/// Writes every byte of `bufs` with as few `writev` calls as the socket allows.
async fn write_all_vectored(
    w: &mut (impl AsyncWriteExt + Unpin),
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut start = 0;
    while start < bufs.len() {
        let mut n = {
            let slices: Vec<std::io::IoSlice<'_>> = bufs[start..]
                .iter()
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && start < bufs.len() {
            let len = bufs[start].len();
            if n >= len {
                n -= len;
                start += 1;
            } else {
                bufs[start].advance(n);
                n = 0;
            }
        }
        while start < bufs.len() && bufs[start].is_empty() {
            start += 1;
        }
    }
    Ok(())
}

/// The QUIC connection a relayed stream belongs to.
#[derive(Clone, Copy)]
pub struct OnConnection<'a> {
    /// Its `stable_id`, which names the relay in [`crate::diag::report`].
    pub id: usize,
    /// Its [`SendGate`], which lets small writes go before bulk ones when the connection's
    /// send credit runs out.
    pub gate: &'a SendGate,
}

/// The worker's answer to a new stream, as each end of a relay handles it.
pub enum Answer<'a> {
    /// No answer frame: bytes only, both ways (the unit tests' relays).
    #[cfg(test)]
    None,
    /// `connect`'s end: the stream from the worker starts with its answer frame. Bytes from the
    /// socket flow to the stream at once while the answer is awaited, and bytes from the stream
    /// reach the socket only after this callback has accepted it. This is how a new connection
    /// costs one round trip, not two.
    Await(&'a mut (dyn FnMut(sluice_proto::frames::Frame) -> Result<(), String> + Send)),
    /// The worker's end: this encoded answer goes out ahead of the target's first bytes, in
    /// the same write and so the same packet, or alone once the target has ended. A packet
    /// with the answer alone would wake `connect` for nothing it can pass on; held back to
    /// ride with the echo, a new connection's first echoed byte came about 10 µs sooner
    /// (docs/design.md).
    Send(Bytes),
}

/// Relays bytes only, both ways, until both directions are finished or one fails.
#[cfg(test)]
pub async fn relay(
    tcp: TcpStream,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    early: Bytes,
    counts: &Arc<Counts>,
    conn: OnConnection<'_>,
) -> Outcome {
    relay_after(tcp, send, recv, early, counts, conn, Answer::None).await
}

/// Relays until both directions are finished or one fails, with the stream's answer frame
/// handled as `answer` says. `early` holds bytes already read from the QUIC stream (sent right
/// behind its header) and goes to the socket first.
pub async fn relay_after(
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    early: Bytes,
    counts: &Arc<Counts>,
    conn: OnConnection<'_>,
    answer: Answer<'_>,
) -> Outcome {
    let (awaited, mut to_send) = match answer {
        #[cfg(test)]
        Answer::None => (None, None),
        Answer::Await(f) => (Some(f), None),
        Answer::Send(b) => (None, Some(b)),
    };
    let _registered = RelayProbe::new(conn.id, send.id(), counts);
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let to_tcp = async {
        let mut dir = crate::spin::Direction::default();
        let mut early = early;
        if let Some(answer) = awaited {
            let mut buf = BytesMut::from(&early[..]);
            let frame = loop {
                match sluice_proto::frames::Frame::decode(&buf) {
                    Ok(Some((frame, used))) => {
                        bytes::Buf::advance(&mut buf, used);
                        break frame;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("bad answer from worker: {e}")),
                }
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                    Ok(None) => return Err("worker closed the stream".into()),
                    Err(e) => return Err(format!("read from stream: {e}")),
                }
            };
            answer(frame)?;
            early = buf.freeze();
        }
        if !early.is_empty() {
            counts.got_from_quic(early.len());
            tw.write_all(&early)
                .await
                .map_err(|e| format!("write to socket: {e}"))?;
            counts.written_to_tcp(early.len());
        }
        // quinn hands over one chunk per received packet (~1.2 KB); gathering up to 32 of them
        // into one writev cut the worker's CPU per GiB (one syscall per packet dominated).
        let mut chunks: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
        loop {
            match recv.read_chunks(&mut chunks).await {
                Ok(Some(n)) => {
                    let len: usize = chunks[..n].iter().map(Bytes::len).sum();
                    counts.got_from_quic(len);
                    write_all_vectored(&mut tw, &mut chunks[..n])
                        .await
                        .map_err(|e| format!("write to socket: {e}"))?;
                    counts.written_to_tcp(len);
                    dir.moved(len);
                }
                Ok(None) => {
                    let _ = tw.shutdown().await;
                    counts.tcp_shut_down.store(true, Ordering::Relaxed);
                    return Ok::<_, String>(());
                }
                Err(e) => return Err(format!("read from stream: {e}")),
            }
        }
    };
    let to_quic = async {
        let mut dir = crate::spin::Direction::default();
        // Reads start small and double while they come back full, so bulk transfers reach
        // READ_CHUNK within a few reads and idle connections keep 16 KiB.
        let mut want = FIRST_READ;
        let mut buf = BytesMut::with_capacity(want);
        // Chunks read and not yet taken by quinn. Normally one chunk is handed over before the
        // next read; once quinn has taken nothing for READ_AHEAD_AFTER, reading goes on up to
        // READ_AHEAD_MAX (as far as the process's read-ahead budget allows), so the socket's receive queue empties (see pool::copy_pooled: a
        // full receive queue can keep out the acknowledgement the other direction waits for).
        let mut pending: Vec<Bytes> = Vec::new();
        let mut queued = 0usize;
        // Whether anything pending came from a read larger than a small write: then all of it
        // is bulk to the connection's gate, even once only a short tail is left.
        let mut from_bulk_read = false;
        let mut eof = false;
        let mut stuck = StuckWrite::default();
        let mut read_ahead = false;
        let mut share = AheadShare::default();
        // Bytes of the answer at the front of `pending` not yet taken by quinn: they are not
        // the target's, so they are not counted.
        let mut answer_left = 0usize;
        loop {
            // The answer goes once the target has sent its first bytes or ended.
            if let Some(a) = to_send.take_if(|_| eof || !pending.is_empty()) {
                answer_left = a.len();
                queued += a.len();
                pending.insert(0, a);
            }
            if pending.is_empty() {
                stuck.moved();
                read_ahead = false;
                from_bulk_read = false;
                if eof {
                    let _ = send.finish();
                    counts.quic_finished.store(true, Ordering::Relaxed);
                    return Ok::<_, String>(());
                }
            }
            counts.reading_ahead.store(read_ahead, Ordering::Relaxed);
            let mut may_read =
                !eof && (pending.is_empty() || (read_ahead && queued < READ_AHEAD_MAX));
            // A read ahead of a stuck write is held against the process's budget; without room
            // in it, the write waits as it would without read-ahead, and asks again later.
            if may_read && queued > 0 && !share.hold(queued + buf.capacity().max(want)) {
                may_read = false;
                read_ahead = false;
                stuck.restart();
            }
            // Only a read that may happen gets a buffer: one waiting behind a stuck write
            // would hold up to READ_CHUNK per stream for nothing.
            if may_read && buf.capacity() < want / 4 {
                buf.reserve(want);
            }
            let room = buf.capacity();
            // Small goes first (gate.rs), but not once quinn has taken nothing for a while:
            // then the stream waits on its own window, and each read ahead would otherwise
            // renew its claim and hold the session's bulk streams back again.
            let small = !read_ahead && !from_bulk_read && queued <= SMALL_WRITE;
            tokio::select! {
                biased;
                written = conn.gate.write_chunks(&mut send, &mut pending, small),
                    if !pending.is_empty() => {
                    let written = written.map_err(|e| format!("write to stream: {e}"))?;
                    // Fully written chunks are left empty at the front.
                    pending.drain(..written.chunks);
                    queued -= written.bytes;
                    let of_answer = written.bytes.min(answer_left);
                    answer_left -= of_answer;
                    counts.taken_by_quic(written.bytes - of_answer);
                    dir.moved(written.bytes);
                    stuck.moved();
                    read_ahead = false;
                }
                n = tr.read_buf(&mut buf), if may_read => {
                    let n = n.map_err(|e| format!("read from socket: {e}"))?;
                    if n == 0 {
                        eof = true;
                        counts.tcp_ended.store(true, Ordering::Relaxed);
                    } else {
                        counts.read_from_tcp(n);
                        if n == room && want < READ_CHUNK {
                            want *= 2;
                        }
                        queued += n;
                        from_bulk_read |= n > SMALL_WRITE;
                        pending.push(buf.split().freeze());
                    }
                }
                // Polled only after the write above was: quinn has taken nothing for
                // READ_AHEAD_AFTER, so from now on read ahead.
                () = std::future::poll_fn(|cx| stuck.poll_stuck(cx)),
                    if !pending.is_empty() && !read_ahead => read_ahead = true,
            }
            share.keep(queued);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Both ends of a QUIC connection on loopback. The client's stream receive window is 64 KiB,
    /// so quinn stops taking the relay's bytes soon after the client stops reading.
    async fn quic_pair() -> (
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        quinn::Connection,
    ) {
        let mut small = crate::quic::transport_config(true);
        small
            .stream_receive_window((64u32 << 10).into())
            .receive_window((256u32 << 10).into());
        crate::quic::loopback_pair(crate::quic::transport_config(false), small).await
    }

    /// A connected TCP pair on loopback with 16 KiB buffers (32 KiB after the kernel doubles
    /// them), so the kernel holds little between the two.
    async fn small_tcp_pair() -> (TcpStream, TcpStream) {
        let small = || {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.set_recv_buffer_size(16 * 1024).unwrap();
            s.set_send_buffer_size(16 * 1024).unwrap();
            s
        };
        let l = small();
        l.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = l.listen(4).unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(small().connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// A worker-side relay that answers `answer` for a stream whose client sent `ping`, to a
    /// target reached over loopback TCP, once the target has read the `ping`: (the client's
    /// streams, the target's socket, the relay's counts, the relay, what must stay alive).
    async fn answering_relay(
        answer: &'static [u8],
    ) -> (
        (quinn::SendStream, quinn::RecvStream),
        TcpStream,
        Arc<Counts>,
        tokio::task::JoinHandle<Outcome>,
        (quinn::Endpoint, quinn::Endpoint, quinn::Connection),
    ) {
        let (server, client, worker_side, client_side) = quic_pair().await;
        let (mut c_send, c_recv) = client_side.open_bi().await.unwrap();
        c_send.write_all(b"ping").await.unwrap();
        let (send, recv) = worker_side.accept_bi().await.unwrap();
        let (target, tcp) = small_tcp_pair().await;
        let counts = Arc::new(Counts::default());
        let relay_counts = counts.clone();
        let relay = tokio::spawn(async move {
            let gate = SendGate::default();
            let conn = OnConnection { id: 0, gate: &gate };
            let answer = Answer::Send(Bytes::from_static(answer));
            relay_after(tcp, send, recv, Bytes::new(), &relay_counts, conn, answer).await
        });
        let mut target = target;
        let mut got = [0u8; 4];
        target.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        (
            (c_send, c_recv),
            target,
            counts,
            relay,
            (server, client, client_side),
        )
    }

    #[tokio::test]
    async fn the_answer_waits_for_the_targets_first_bytes_and_shares_their_packet() {
        let ((mut c_send, mut c_recv), mut target, counts, relay, _keep) =
            answering_relay(b"ANSWER").await;
        // The target has not spoken: nothing, not even the answer, has reached the client.
        let early = tokio::time::timeout(
            Duration::from_millis(300),
            c_recv.read_chunk(usize::MAX, true),
        )
        .await;
        assert!(
            early.is_err(),
            "the client got {early:?} before the target spoke"
        );
        target.write_all(b"pong").await.unwrap();
        let first =
            tokio::time::timeout(Duration::from_secs(10), c_recv.read_chunk(usize::MAX, true))
                .await
                .expect("the answer and the target's bytes within 10 s")
                .unwrap()
                .unwrap();
        assert_eq!(
            &first.bytes[..],
            b"ANSWERpong",
            "the answer and the target's first bytes come in one piece"
        );
        target.shutdown().await.unwrap();
        c_send.finish().unwrap();
        assert!(c_recv.read_chunk(usize::MAX, true).await.unwrap().is_none());
        assert_eq!(relay.await.unwrap(), Outcome::Done);
        // The answer is not the target's: only its 4 bytes are counted.
        assert_eq!(counts.tcp_to_quic.load(Ordering::Relaxed), 4);
        assert_eq!(counts.quic_to_tcp.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_target_that_ends_without_a_word_still_lets_the_answer_out() {
        let ((mut c_send, mut c_recv), mut target, counts, relay, _keep) =
            answering_relay(b"ANSWER").await;
        target.shutdown().await.unwrap();
        let all = tokio::time::timeout(Duration::from_secs(10), c_recv.read_to_end(1024))
            .await
            .expect("the stream ends within 10 s")
            .unwrap();
        assert_eq!(&all[..], b"ANSWER");
        c_send.finish().unwrap();
        assert_eq!(relay.await.unwrap(), Outcome::Done);
        assert_eq!(counts.tcp_to_quic.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn tcp_is_read_ahead_of_a_stalled_quic_stream_and_nothing_is_lost() {
        let _budget = crate::relay::pool::BUDGET_TEST_LOCK.lock().await;
        // Without read-ahead the relay stops at what the stream window, its one read and the
        // socket buffers hold: 131,072 bytes when measured.
        let sent =
            taken_while_stalled(crate::relay::pool::DEFAULT_READ_AHEAD_BUDGET, 4_000_000).await;
        assert!(
            sent >= READ_AHEAD_MAX,
            "only {sent} bytes taken while the QUIC stream was stalled"
        );
    }

    /// Bytes the relay takes from its TCP side while the QUIC client reads nothing, until
    /// nothing more is taken for 1.5 s (longer than the relay waits before it reads ahead),
    /// with the process's read-ahead budget set to `budget`. Then the client reads: all `len`
    /// bytes must arrive intact.
    async fn taken_while_stalled(budget: usize, len: u32) -> usize {
        let (_server, _client, worker_side, client_side) = quic_pair().await;
        let (mut c_send, mut c_recv) = client_side.open_bi().await.unwrap();
        c_send.write_all(b"x").await.unwrap();
        let (send, recv) = worker_side.accept_bi().await.unwrap();
        let (mut app, tcp) = small_tcp_pair().await;
        let counts = Arc::new(Counts::default());
        let relay_counts = counts.clone();
        crate::relay::pool::set_read_ahead_budget(budget);
        let relay = tokio::spawn(async move {
            let gate = SendGate::default();
            let conn = OnConnection { id: 0, gate: &gate };
            relay(tcp, send, recv, Bytes::new(), &relay_counts, conn).await
        });
        let data: Vec<u8> = (0..len).map(|i| (i % 239) as u8).collect();
        let mut sent = 0;
        while sent < data.len() {
            match tokio::time::timeout(Duration::from_millis(1500), app.write(&data[sent..])).await
            {
                Ok(n) => sent += n.unwrap(),
                Err(_) => break,
            }
        }
        crate::relay::pool::set_read_ahead_budget(crate::relay::pool::DEFAULT_READ_AHEAD_BUDGET);
        // The app writes the rest and ends; the client reads it all.
        let rest = async {
            app.write_all(&data[sent..]).await.unwrap();
            app.shutdown().await.unwrap();
        };
        let read = c_recv.read_to_end(usize::MAX);
        let (_, out) = tokio::join!(rest, read);
        let out = out.unwrap();
        assert_eq!(out.len(), data.len());
        assert!(out == data, "the bytes changed on the way");
        assert_eq!(
            counts.tcp_to_quic.load(Ordering::Relaxed),
            data.len() as u64
        );
        c_send.finish().unwrap();
        assert_eq!(relay.await.unwrap(), Outcome::Done);
        sent
    }

    #[tokio::test]
    async fn the_quic_relay_reads_ahead_only_as_far_as_the_budget() {
        let _budget = crate::relay::pool::BUDGET_TEST_LOCK.lock().await;
        // Nothing read ahead: what the window, one read and the sockets hold (131,072 bytes
        // when measured).
        let none = taken_while_stalled(0, 2_000_000).await;
        assert!(none < 256 * 1024, "{none} bytes taken with no budget");
        const BUDGET: usize = 512 * 1024;
        let some = taken_while_stalled(BUDGET, 2_000_000).await;
        assert!(
            some > none + BUDGET / 2 && some <= none + BUDGET,
            "{some} bytes taken with a budget of {BUDGET}, {none} with none"
        );
    }

    #[tokio::test]
    async fn the_state_report_shows_a_relay_stalled_on_quinn_and_forgets_it_when_it_ends() {
        let _budget = crate::relay::pool::BUDGET_TEST_LOCK.lock().await;
        let (_server, _client, worker_side, client_side) = quic_pair().await;
        let _registered = crate::diag::ConnProbe::new(&worker_side);
        let (mut c_send, mut c_recv) = client_side.open_bi().await.unwrap();
        c_send.write_all(b"x").await.unwrap();
        let (send, recv) = worker_side.accept_bi().await.unwrap();
        let stream = send.id().index();
        let (mut app, tcp) = small_tcp_pair().await;
        let counts = Arc::new(Counts::default());
        let relay_counts = counts.clone();
        let conn = worker_side.stable_id();
        let relay = tokio::spawn(async move {
            let gate = SendGate::default();
            let conn = OnConnection {
                id: conn,
                gate: &gate,
            };
            relay(tcp, send, recv, Bytes::new(), &relay_counts, conn).await
        });
        // The QUIC client reads nothing: the relay's writes to quinn stop, then the app's.
        let data = vec![7u8; 2_000_000];
        let mut sent = 0;
        while let Ok(n) =
            tokio::time::timeout(Duration::from_millis(1500), app.write(&data[sent..])).await
        {
            sent += n.unwrap();
        }
        let report = crate::diag::report();
        let name = format!("relay on connection {conn} stream {stream}:");
        let line = report
            .iter()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("no line for the stalled relay in {report:#?}"));
        let taken = counts.tcp_to_quic.load(Ordering::Relaxed);
        assert!(
            line.contains(&format!("taken by quinn {taken} (waits for quinn")),
            "{line}"
        );
        assert!(
            report
                .iter()
                .any(|l| l.starts_with(&format!("quic connection {conn} with "))),
            "no line for the connection in {report:#?}"
        );
        // Once the client has read everything and both sides ended, the relay is gone.
        let rest = async {
            app.write_all(&data[sent..]).await.unwrap();
            app.shutdown().await.unwrap();
        };
        let (_, out) = tokio::join!(rest, c_recv.read_to_end(usize::MAX));
        assert_eq!(out.unwrap().len(), data.len());
        c_send.finish().unwrap();
        assert_eq!(relay.await.unwrap(), Outcome::Done);
        let report = crate::diag::report();
        assert!(!report.iter().any(|l| l.starts_with(&name)), "{report:#?}");
    }

    /// A relay whose QUIC stream stopped taking bytes (the client reads nothing) has a small
    /// write waiting, and claims the connection's gate for it. Once it reads ahead, its writes
    /// count as bulk: a trickle of small input must not renew that claim with every read and
    /// keep holding the session's bulk streams back.
    #[tokio::test]
    async fn a_relay_reading_ahead_of_its_stuck_stream_claims_nothing_on_the_gate() {
        let _budget = crate::relay::pool::BUDGET_TEST_LOCK.lock().await;
        crate::relay::pool::set_read_ahead_budget(crate::relay::pool::DEFAULT_READ_AHEAD_BUDGET);
        let (_server, _client, worker_side, client_side) = quic_pair().await;
        let (mut c_send, _c_recv) = client_side.open_bi().await.unwrap();
        c_send.write_all(b"x").await.unwrap();
        let (send, recv) = worker_side.accept_bi().await.unwrap();
        let (mut app, tcp) = small_tcp_pair().await;
        let counts = Arc::new(Counts::default());
        let gate = Arc::new(SendGate::default());
        let relay = {
            let (counts, gate) = (counts.clone(), gate.clone());
            tokio::spawn(async move {
                let conn = OnConnection { id: 0, gate: &gate };
                relay(tcp, send, recv, Bytes::new(), &counts, conn).await
            })
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let waits = || load(&counts.read_from_tcp) > load(&counts.tcp_to_quic);
        // Keystroke-sized pieces until quinn stops taking them (the client's stream window is
        // full): a piece then waits in the relay, twice in a row 20 ms apart.
        let start = std::time::Instant::now();
        loop {
            app.write_all(&[7u8; 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            if waits() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if waits() {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "quinn kept taking"
            );
        }
        assert_eq!(
            gate.small_waiting(),
            1,
            "the stuck small write made no claim"
        );
        while !counts.reading_ahead.load(Ordering::Relaxed) {
            assert!(start.elapsed() < Duration::from_secs(15), "no read-ahead");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // More small input arrives and is read ahead.
        let read = load(&counts.read_from_tcp);
        app.write_all(&[7u8; 1024]).await.unwrap();
        while load(&counts.read_from_tcp) == read {
            assert!(start.elapsed() < Duration::from_secs(20), "not read ahead");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            gate.small_waiting(),
            0,
            "a relay reading ahead still claims the gate"
        );
        relay.abort();
    }
}
