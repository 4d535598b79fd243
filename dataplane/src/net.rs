//! Socket setup shared by the worker and the client.

use std::net::SocketAddr;

/// UDP socket buffer size requested for QUIC. The default 208 KiB loses thousands of packets per
/// GiB on loopback (PERF.md). The kernel caps the request at `net.core.[rw]mem_max` (4 MiB on
/// these machines).
const UDP_BUFFER: usize = 8 << 20;

/// Binds a non-blocking UDP socket with large buffers; `reuse_port` lets every worker thread
/// bind the same port so the kernel spreads clients over them by 4-tuple.
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
