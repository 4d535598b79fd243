//! Socket setup shared by the worker and the client.

use std::net::SocketAddr;

/// UDP socket buffer size requested for QUIC. The default 208 KiB loses thousands of packets per
/// GiB on loopback (PERF.md). The kernel caps the request at `net.core.[rw]mem_max` (4 MiB on
/// these machines) unless the process may exceed it (CAP_NET_ADMIN: `SO_RCVBUFFORCE`).
const UDP_BUFFER: usize = 8 << 20;

/// Gives `socket` UDP_BUFFER each way: past `[rw]mem_max` when the process is allowed to
/// (CAP_NET_ADMIN), else as much as the kernel grants. Warns once when it got less.
fn size_udp_buffers(socket: &socket2::Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &UDP_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &UDP_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(UDP_BUFFER);
    }
    // The kernel reports twice the size it keeps for data.
    let got = socket.recv_buffer_size().unwrap_or(0) / 2;
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if got < UDP_BUFFER && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "QUIC's UDP receive buffer is {} KiB, less than the {} KiB asked for: bursts may be \
             dropped and slow transfers down; raise net.core.rmem_max to {UDP_BUFFER} (or \
             grant CAP_NET_ADMIN)",
            got / 1024,
            UDP_BUFFER / 1024
        );
    }
}

/// Binds a non-blocking UDP socket with large buffers; `reuse_port` lets every worker thread
/// bind the same port so the kernel spreads clients over them by 4-tuple.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    size_udp_buffers(&socket);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Pending connections a listener holds; the kernel caps it at `net.core.somaxconn` (4096
/// here). 1024 overflowed under a burst of 1,000 connections while the threads were busy
/// relaying, and the overflowed connections were reset.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// A non-blocking TCP listener with [`LISTEN_BACKLOG`]; `reuse_port` lets every worker thread
/// bind the same port (`connect`'s local port is not shared). Accepted sockets inherit the
/// listener's buffer sizes, so `buffer` (see [`bound_buffers`]) applies to them.
pub fn bind_tcp(
    addr: SocketAddr,
    reuse_port: bool,
    buffer: Option<usize>,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_reuse_address(true)?;
    bound_buffers(&socket, buffer);
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Proof that this process owns a worker port on this host (network namespace).
///
/// The worker's threads share their port with `SO_REUSEPORT`, which the kernel also grants to
/// any other process of the same user: a second worker on the same address would start
/// without "address in use" and be handed part of the first one's new connections. So the
/// port is first claimed by binding an abstract Unix socket named after it, which only one
/// process can hold and which the kernel releases when the process ends, however it ends.
/// The claim covers the port on every address of the host.
#[derive(Debug)]
pub struct PortClaim {
    _socket: std::os::unix::net::UnixDatagram,
}

impl PortClaim {
    /// Claims `port`, or says that another process holds it.
    pub fn take(port: u16) -> std::io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluice-worker-port-{port}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
            Ok(s) => Ok(Self { _socket: s }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "address in use: another Sluice worker on this host listens on port \
                     {port}; stop it or give this one another address"
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Binds, for each of `threads`, a UDP socket (QUIC) and a TCP listener (TLS and TCP
/// transports) on one shared port number, after claiming that port for this process
/// ([`PortClaim`]). With port 0 the port is picked for UDP and tried for TCP, a few times if
/// TCP has it taken.
#[allow(clippy::type_complexity)]
pub fn bind_all(
    addr: SocketAddr,
    threads: usize,
    tcp_buffer: Option<usize>,
) -> std::io::Result<(
    SocketAddr,
    PortClaim,
    Vec<(std::net::UdpSocket, std::net::TcpListener)>,
)> {
    let mut given = (addr.port() != 0)
        .then(|| PortClaim::take(addr.port()))
        .transpose()?;
    let mut last_err = None;
    for _ in 0..8 {
        let first = bind_udp(addr, true)?;
        let local = first.local_addr()?;
        let claim = match given.take() {
            Some(c) => c,
            None => match PortClaim::take(local.port()) {
                Ok(c) => c,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            },
        };
        let tcp = match bind_tcp(local, true, tcp_buffer) {
            Ok(t) => t,
            Err(e) if addr.port() == 0 => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut out = vec![(first, tcp)];
        for _ in 1..threads {
            out.push((bind_udp(local, true)?, bind_tcp(local, true, tcp_buffer)?));
        }
        return Ok((local, claim, out));
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// Fixes a TCP socket's receive and send buffers at `buffer` bytes each (the kernel doubles
/// the figure for its bookkeeping); `None` leaves the kernel's autotuning, which grows them
/// up to `net.ipv4.tcp_rmem`/`tcp_wmem`'s maximum. A fixed size bounds the kernel memory a
/// relayed connection can hold, at the price of throughput on paths whose bandwidth-delay
/// product exceeds it (docs/testing.md, "the tcp stall").
///
/// When the kernel does not grant the size (it caps it at `net.core.rmem_max`/`wmem_max`
/// silently), the worker logs a warning once, naming the figure it got and the sysctl to raise.
pub fn bound_buffers(socket: &socket2::Socket, buffer: Option<usize>) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(n) = buffer {
        if let Err(problem) = fix_buffers(socket, n) {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!("tcp_buffer_bytes = {n}: {problem}");
            }
        }
    }
}

/// Sets both buffers to `n` and reads them back: `Err` says what fell short and why.
fn fix_buffers(socket: &socket2::Socket, n: usize) -> Result<(), String> {
    let set = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| format!("could not set the socket's {what} buffer ({e})"))
    };
    set("receive", socket.set_recv_buffer_size(n))?;
    set("send", socket.set_send_buffer_size(n))?;
    let read = |r: std::io::Result<usize>| r.map_err(|e| format!("could not read it back ({e})"));
    // The kernel reports twice the size it keeps for data.
    let (rcv, snd) = (
        read(socket.recv_buffer_size())? / 2,
        read(socket.send_buffer_size())? / 2,
    );
    for (what, got, sysctl) in [
        ("receive", rcv, "net.core.rmem_max"),
        ("send", snd, "net.core.wmem_max"),
    ] {
        if got < n {
            return Err(format!(
                "the kernel granted a {what} buffer of only {got} bytes; raise {sysctl} to at least {n} or lower the option"
            ));
        }
    }
    Ok(())
}

/// Round trip up to which a socket the relays write into is "near" (see [`fit_send_buffer`]).
pub const NEAR_RTT: std::time::Duration = std::time::Duration::from_micros(100);
/// Send buffer given to a near socket; the kernel doubles the figure for its bookkeeping.
pub const NEAR_SEND_BUFFER: usize = 256 * 1024;
/// Receive buffer given to a near socket whose bytes a relay splices on without reading them:
/// over `-transport tcp`, `connect`'s application sockets and the worker's target sockets (see
/// [`fit_buffers`]).
pub const NEAR_SPLICED_RECEIVE_BUFFER: usize = 128 * 1024;

/// The smoothed round trip the kernel holds for a connected TCP socket (from the handshake
/// until data has flowed), or `None` if it cannot be read.
pub fn round_trip(s: &impl std::os::fd::AsRawFd) -> Option<std::time::Duration> {
    crate::sys::tcp_info(s)
        .filter(|info| info.tcpi_rtt > 0)
        .map(|info| std::time::Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// Gives a connected socket that relayed bytes are written into a fixed send buffer of
/// [`NEAR_SEND_BUFFER`] when its peer is on this host, or when its round trip is at most
/// [`NEAR_RTT`] (a fast local network), and leaves the kernel's autotuning otherwise. Returns
/// whether it fixed it.
///
/// Autotuning gives a loopback socket a send buffer of `tcp_wmem`'s maximum (4 MiB here) at
/// once, so megabytes can wait between the relay and the receiver, most likely beyond what the
/// CPU caches hold. With 512 KiB the worker hop moved about 1.5 times as much at two thirds of
/// the worker's CPU per byte (docs/design.md). 512 KiB in
/// flight over at most 100 µs still allows 5 GB/s, more than one relayed connection moves, so
/// the cap costs nothing there; a farther path keeps autotuning, which it needs. A peer on this
/// host counts as near whatever its handshake took: on a loaded machine a loopback handshake
/// can take over 100 µs, and the path is no longer for it.
pub fn fit_send_buffer(s: &tokio::net::TcpStream) -> bool {
    fit_buffers(s, None)
}

/// [`fit_send_buffer`], and for a near socket also a fixed receive buffer of `receive` bytes
/// when one is given. Returns whether it fixed them.
///
/// Over `-transport tcp` the first socket of each direction gets one
/// ([`NEAR_SPLICED_RECEIVE_BUFFER`]): `connect`'s application socket (uploads) and the
/// worker's target socket (downloads), whose bytes are spliced on. Autotuning lets such a
/// socket's receive queue grow to megabytes; the likely reason for the gain (not measured) is
/// that the pages the sender wrote are then still in the caches when the reader at the far end
/// copies them out (splicing passes the same pages on). With 128 KiB the full tcp path moved
/// 2,130–2,654 MB/s at 0.32–0.40 CPU-s/GiB of proxy CPU against 1,705–1,786 at 0.46–0.51
/// uploading, and 2,123–3,281 MB/s at 0.19–0.41 against 1,542–1,831 at 0.55–0.62 downloading
/// (docs/design.md). Where the bytes are read
/// to be encrypted (`quic`, `tls`) a fixed receive buffer made no difference or was slower,
/// so those keep autotuning.
pub fn fit_buffers(s: &tokio::net::TcpStream, receive: Option<usize>) -> bool {
    fit_buffers_to(s, None, receive)
}

/// [`fit_buffers`] for a socket whose peer's address the caller already has (from `accept` or
/// the dial), which saves asking the kernel for it: one or two system calls per connection.
pub fn fit_buffers_to(
    s: &tokio::net::TcpStream,
    peer: Option<SocketAddr>,
    receive: Option<usize>,
) -> bool {
    // The address alone decides for a peer on this host; its round trip is read only otherwise.
    let same_host = on_this_host(s, peer);
    let rtt = if same_host { None } else { round_trip(s) };
    let Some(n) = send_buffer_for(same_host, rtt) else {
        return false;
    };
    let sock = socket2::SockRef::from(s);
    let send = sock.set_send_buffer_size(n).is_ok();
    match receive {
        Some(r) => sock.set_recv_buffer_size(r).is_ok() && send,
        None => send,
    }
}

/// Whether a connected socket's peer (`peer`, or asked of the kernel when `None`) is on this
/// host: a loopback address, or the socket's own address (traffic to it goes through the
/// loopback device as well). The socket's own address is asked for only in the second case.
fn on_this_host(s: &tokio::net::TcpStream, peer: Option<SocketAddr>) -> bool {
    let Some(peer) = peer.or_else(|| s.peer_addr().ok()) else {
        return false;
    };
    peer.ip().is_loopback() || s.local_addr().is_ok_and(|local| peer.ip() == local.ip())
}

/// The fixed send buffer for a socket whose peer is on this host or not, with this round
/// trip; `None`: leave autotuning.
fn send_buffer_for(same_host: bool, rtt: Option<std::time::Duration>) -> Option<usize> {
    (same_host || rtt.is_some_and(|rtt| rtt <= NEAR_RTT)).then_some(NEAR_SEND_BUFFER)
}

/// Connects a TCP stream, with [`bound_buffers`] applied before the handshake (the window
/// scale is chosen from the receive buffer at that point), or, without a fixed size,
/// [`fit_buffers`] with `near_receive` after it. `first` (the application's first bytes, when
/// the client sent some with its request) is sent as soon as the connection allows; returns how
/// many of them went.
///
/// To a target on this host the whole handshake runs inside `connect(2)`: the SYN, the
/// SYN-ACK and the ACK are delivered through the loopback device before the call returns, and
/// the target's process is woken to accept. Sent right then, the first bytes are waiting when
/// that process reads, instead of arriving a turn of the event loop later. A connection still
/// in its handshake takes nothing (`EAGAIN`), and the caller writes the bytes once it is up.
pub async fn connect_tcp(
    addr: SocketAddr,
    buffer: Option<usize>,
    first: &[u8],
    near_receive: Option<usize>,
) -> std::io::Result<(tokio::net::TcpStream, usize)> {
    // Made non-blocking by socket(2) itself (SOCK_NONBLOCK): two fcntl(2) calls fewer per dial.
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    bound_buffers(&socket, buffer);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut sent = 0;
    if !first.is_empty() {
        match socket.send_with_flags(first, libc::MSG_NOSIGNAL) {
            Ok(n) => sent = n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // The handshake already failed (refused, reset): the error is consumed by this
            // call, so it is reported from here.
            Err(e) => return Err(e),
        }
    }
    let stream = tokio::net::TcpStream::from_std(socket.into())?;
    if sent == 0 {
        // Wait for the handshake, as `TcpSocket::connect` does.
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    if buffer.is_none() {
        fit_buffers_to(&stream, Some(addr), near_receive);
    }
    Ok((stream, sent))
}

/// A UDP socket on a free loopback port, set up as Sluice's QUIC endpoints set theirs up.
#[cfg(test)]
pub(crate) fn loopback_udp() -> std::net::UdpSocket {
    bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new TCP socket's receive buffer: `tcp_rmem`'s middle figure.
    fn default_receive_buffer() -> usize {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    fn buffers(s: &tokio::net::TcpStream) -> (usize, usize) {
        let r = socket2::SockRef::from(s);
        (r.recv_buffer_size().unwrap(), r.send_buffer_size().unwrap())
    }

    #[test]
    fn a_worker_port_is_held_by_one_owner_and_released_with_it() {
        let (local, claim, sockets) = bind_all("127.0.0.1:0".parse().unwrap(), 2, None).unwrap();
        assert_eq!(sockets.len(), 2);
        let e = bind_all(local, 2, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("another Sluice worker"), "{e}");
        // The claim covers the port on every address, not only the one first bound.
        let any = SocketAddr::from(([0, 0, 0, 0], local.port()));
        assert_eq!(
            bind_all(any, 1, None).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        drop((claim, sockets));
        let (again, _claim, _sockets) = bind_all(local, 1, None).unwrap();
        assert_eq!(again, local);
    }

    #[tokio::test]
    async fn a_fixed_buffer_reaches_both_ends_and_none_leaves_autotuning() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), false, Some(64 * 1024)).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let out = connect_tcp(addr, Some(96 * 1024), &[], None)
            .await
            .unwrap()
            .0;
        let (accepted, _) = listener.accept().await.unwrap();
        // The kernel doubles the figure it is given.
        assert_eq!(buffers(&accepted), (128 * 1024, 128 * 1024));
        assert_eq!(buffers(&out), (192 * 1024, 192 * 1024));
        let auto = connect_tcp(addr, None, &[], None).await.unwrap().0;
        let _ = listener.accept().await.unwrap();
        let (rcv, _) = buffers(&auto);
        let default = default_receive_buffer();
        assert_eq!(
            rcv, default,
            "no buffer given must leave the kernel's default (tcp_rmem's middle figure)"
        );
    }

    #[test]
    fn only_a_peer_on_this_host_or_a_near_round_trip_gets_a_fixed_send_buffer() {
        use std::time::Duration;
        let far = false;
        assert_eq!(
            send_buffer_for(far, None),
            None,
            "unknown: leave autotuning"
        );
        assert_eq!(
            send_buffer_for(far, Some(Duration::from_micros(3))),
            Some(NEAR_SEND_BUFFER)
        );
        assert_eq!(send_buffer_for(far, Some(NEAR_RTT)), Some(NEAR_SEND_BUFFER));
        assert_eq!(
            send_buffer_for(far, Some(NEAR_RTT + Duration::from_micros(1))),
            None,
            "a farther path keeps autotuning, which it needs for throughput"
        );
        assert_eq!(send_buffer_for(far, Some(Duration::from_millis(20))), None);
        // A handshake slowed down by a busy machine does not make a peer on this host far.
        assert_eq!(
            send_buffer_for(true, Some(Duration::from_millis(2))),
            Some(NEAR_SEND_BUFFER)
        );
        assert_eq!(send_buffer_for(true, None), Some(NEAR_SEND_BUFFER));
    }

    #[tokio::test]
    async fn a_loopback_connection_gets_the_near_send_buffer_and_keeps_its_receive_buffer() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), false, None).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let default_rcv = default_receive_buffer();
        let out = connect_tcp(addr, None, &[], None).await.unwrap().0;
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(on_this_host(&out, None) && on_this_host(&accepted, None));
        assert_eq!(
            buffers(&out),
            (default_rcv, 2 * NEAR_SEND_BUFFER),
            "the send buffer is fixed (the kernel doubles it), the receive buffer is left to \
             autotuning; round trip {:?}",
            round_trip(&out)
        );
        // The accepted side, fitted directly here, as the worker fits its clients' sockets
        // and `connect` its applications'.
        let before = buffers(&accepted);
        assert_ne!(before.1, 2 * NEAR_SEND_BUFFER, "autotuned until fitted");
        assert!(fit_send_buffer(&accepted));
        assert_eq!(buffers(&accepted), (before.0, 2 * NEAR_SEND_BUFFER));
    }

    #[tokio::test]
    async fn a_peer_address_the_caller_gives_decides_without_asking_the_kernel() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), false, None).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let out = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert!(on_this_host(&accepted, Some(peer)));
        assert!(fit_buffers_to(&accepted, Some(peer), None));
        assert_eq!(buffers(&accepted).1, 2 * NEAR_SEND_BUFFER);
        // A given address is taken as it is: one that is not this host's (a documentation
        // address, never dialed) is not on this host although the real peer is on loopback,
        // so the round trip decides (fit_buffers).
        let far: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert!(!on_this_host(&out, Some(far)));
        // The socket's own address counts as this host.
        let own = SocketAddr::new(out.local_addr().unwrap().ip(), 1);
        assert!(on_this_host(&out, Some(own)));
    }

    #[tokio::test]
    async fn a_near_socket_whose_bytes_are_spliced_on_gets_a_fixed_receive_buffer_too() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), false, None).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let out = connect_tcp(addr, None, &[], Some(NEAR_SPLICED_RECEIVE_BUFFER))
            .await
            .unwrap()
            .0;
        assert_eq!(
            buffers(&out),
            (2 * NEAR_SPLICED_RECEIVE_BUFFER, 2 * NEAR_SEND_BUFFER),
            "a dial whose bytes will be spliced on gets both"
        );
        let (accepted, _) = listener.accept().await.unwrap();
        assert_ne!(
            buffers(&accepted).0,
            2 * NEAR_SPLICED_RECEIVE_BUFFER,
            "autotuned until fitted"
        );
        assert!(fit_buffers(&accepted, Some(NEAR_SPLICED_RECEIVE_BUFFER)));
        assert_eq!(
            buffers(&accepted),
            (2 * NEAR_SPLICED_RECEIVE_BUFFER, 2 * NEAR_SEND_BUFFER)
        );
    }

    #[test]
    fn a_buffer_above_the_kernels_cap_is_reported() {
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let problem = fix_buffers(&socket, cap * 2).unwrap_err();
        assert!(
            problem.contains(&format!("only {cap} bytes")) && problem.contains("net.core.rmem_max"),
            "{problem}"
        );
        assert_eq!(fix_buffers(&socket, 64 * 1024), Ok(()));
    }

    /// Whether this process holds CAP_NET_ADMIN (bit 12 of CapEff), which lets a socket's
    /// buffers exceed `net.core.rmem_max`.
    fn has_net_admin() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << 12) != 0)
    }

    #[test]
    fn quic_sockets_get_the_udp_buffer_asked_for_or_the_kernels_cap() {
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let udp = loopback_udp();
        let got = socket2::SockRef::from(&udp).recv_buffer_size().unwrap() / 2;
        if has_net_admin() {
            assert_eq!(
                got, UDP_BUFFER,
                "with CAP_NET_ADMIN, rmem_max ({cap}) is no limit"
            );
        } else {
            assert_eq!(
                got,
                UDP_BUFFER.min(cap),
                "without CAP_NET_ADMIN, rmem_max caps it"
            );
        }
    }
}
