//! TCP ↔ TCP relay inside the kernel: a BPF sockmap redirects each socket's received bytes to
//! the other socket's send queue, so no byte and no wake-up of the worker is on the path.
//!
//! Two `SOCKHASH` maps keyed by socket cookie (`SO_COOKIE`):
//! - `peers` holds, under each relayed socket's cookie, the *other* socket of its pair;
//! - `verdict` holds each relayed socket under its own cookie and carries an `sk_skb` verdict
//!   program. For every chunk a socket in it receives, the program redirects the chunk to
//!   `peers[cookie of the receiving socket]`, onto that socket's send side.
//!
//! A pair goes into `peers` before either socket goes into `verdict`, so a redirect never looks
//! for a peer that is not there yet (which would drop the bytes). Bytes that arrived before a
//! socket went into `verdict` wait in its receive queue; setting `SO_RCVLOWAT` makes the kernel
//! run its data-ready callback, which now passes them through the program ahead of anything
//! that arrives later, so order is kept.
//!
//! The kernel does not forward end of stream. The relay waits for each socket's end or error,
//! then for the bytes it redirected to reach the peer's send queue (received on one side =
//! written on the other, from `TCP_INFO` and `SIOCOUTQ`), and shuts the peer down for writing.
//! Closing a socket removes it from both maps.
//!
//! Needs `CAP_BPF` and `CAP_NET_ADMIN` (root); without them [`available`] says why and the
//! worker splices (crate::splice).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Sockets each map holds: two per relayed connection.
const MAX_SOCKETS: u32 = 1 << 17;
/// Relays at once; a connection beyond this is spliced instead.
const MAX_RELAYS: usize = (MAX_SOCKETS / 2) as usize;

// Kernel ABI numbers (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_VERDICT: u32 = 38;
const BPF_NOEXIST: u64 = 1;
const HELPER_GET_SOCKET_COOKIE: i32 = 46;
const HELPER_SK_REDIRECT_HASH: i32 = 72;

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The verdict program:
/// ```text
/// r6 = r1                               ; the skb
/// if skb->len == 0: return SK_DROP      ; the empty segment of an end of stream: nothing to
///                                       ; send, and sending it on a socket shut down for
///                                       ; writing would set EPIPE there
/// r0 = bpf_get_socket_cookie(r1)        ; cookie of the receiving socket
/// *(u64 *)(r10 - 8) = r0
/// r1 = r6
/// r2 = peers                            ; map fd, two instructions
/// r3 = r10 - 8
/// r4 = 0                                ; flags 0: onto the peer's send side
/// r0 = bpf_sk_redirect_hash(r1, r2, r3, r4)  ; SK_PASS, or SK_DROP if the peer is gone
/// exit
/// ```
fn program(peers: RawFd) -> [Insn; 15] {
    [
        insn(0xbf, 6, 1, 0, 0),                        // mov64 r6, r1
        insn(0x61, 2, 1, 0, 0),                        // ldxw r2, [r1 + 0] (len)
        insn(0x55, 2, 0, 2, 0),                        // jne r2, 0, +2
        insn(0xb7, 0, 0, 0, 0),                        // mov64 r0, 0 (SK_DROP)
        insn(0x95, 0, 0, 0, 0),                        // exit
        insn(0x85, 0, 0, 0, HELPER_GET_SOCKET_COOKIE), // call
        insn(0x7b, 10, 0, -8, 0),                      // stxdw [r10-8], r0
        insn(0xbf, 1, 6, 0, 0),                        // mov64 r1, r6
        insn(0x18, 2, 1, 0, peers),                    // lddw r2, map_fd (BPF_PSEUDO_MAP_FD)
        insn(0, 0, 0, 0, 0),
        insn(0xbf, 3, 10, 0, 0),                      // mov64 r3, r10
        insn(0x07, 3, 0, 0, -8),                      // add64 r3, -8
        insn(0xb7, 4, 0, 0, 0),                       // mov64 r4, 0
        insn(0x85, 0, 0, 0, HELPER_SK_REDIRECT_HASH), // call
        insn(0x95, 0, 0, 0, 0),                       // exit
    ]
}

/// `union bpf_attr` as the commands used here read it, zero-padded.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32_at(mut self, at: usize, v: u32) -> Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(mut self, at: usize, v: u64) -> Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    #[allow(unsafe_code)]
    // SAFETY: `attr` is a valid, writable 128-byte `union bpf_attr` for the duration of the
    // call; every pointer inside it was set by the caller to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    #[allow(unsafe_code)]
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe {
        OwnedFd::from_raw_fd(fd as RawFd)
    }
}

fn sockhash() -> std::io::Result<OwnedFd> {
    // map_type, key_size, value_size, max_entries
    let mut attr = Attr::new()
        .u32_at(0, BPF_MAP_TYPE_SOCKHASH)
        .u32_at(4, 8)
        .u32_at(8, 8)
        .u32_at(12, MAX_SOCKETS);
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

fn update(map: &OwnedFd, key: u64, fd: RawFd, flags: u64) -> std::io::Result<()> {
    let value = fd as u64;
    let mut attr = Attr::new()
        .u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, &key as *const u64 as u64)
        .u64_at(16, &value as *const u64 as u64)
        .u64_at(24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

fn delete(map: &OwnedFd, key: u64) {
    let mut attr = Attr::new()
        .u32_at(0, map.as_raw_fd() as u32)
        .u64_at(8, &key as *const u64 as u64);
    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
}

/// The maps and the loaded program, shared by every worker thread (map updates are system
/// calls; nothing here is on the byte path).
pub(crate) struct Maps {
    peers: OwnedFd,
    verdict: OwnedFd,
    _program: OwnedFd,
    relays: AtomicUsize,
}

impl Maps {
    fn load() -> std::io::Result<Self> {
        let peers = sockhash()?;
        let verdict = sockhash()?;
        let insns = program(peers.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        // prog_type, insn_cnt, insns, license, log_level, log_size, log_buf
        let mut attr = Attr::new()
            .u32_at(0, BPF_PROG_TYPE_SK_SKB)
            .u32_at(4, insns.len() as u32)
            .u64_at(8, insns.as_ptr() as u64)
            .u64_at(16, license.as_ptr() as u64)
            .u32_at(24, 1)
            .u32_at(28, log.len() as u32)
            .u64_at(32, log.as_mut_ptr() as u64);
        let program = match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let text = String::from_utf8_lossy(&log);
                let text = text.trim_end_matches('\0').trim();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("loading the relay program: {e}; verifier: {text}"),
                ));
            }
        };
        // target_fd, attach_bpf_fd, attach_type
        let mut attr = Attr::new()
            .u32_at(0, verdict.as_raw_fd() as u32)
            .u32_at(4, program.as_raw_fd() as u32)
            .u32_at(8, BPF_SK_SKB_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut attr)?;
        Ok(Self {
            peers,
            verdict,
            _program: program,
            relays: AtomicUsize::new(0),
        })
    }
}

/// The process's maps, or why the kernel relay cannot be used here.
pub(crate) fn available() -> Result<&'static Maps, &'static str> {
    static MAPS: OnceLock<Result<Maps, String>> = OnceLock::new();
    MAPS.get_or_init(|| Maps::load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(String::as_str)
}

fn cookie(s: &TcpStream) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    #[allow(unsafe_code)]
    // SAFETY: `v` and `len` are valid for writes and `len` is `v`'s size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

/// (bytes the socket has received, bytes written to it so far). The second is acknowledged
/// plus still queued, read in that order, so an acknowledgement arriving in between can only
/// make it smaller than the truth, never larger.
fn counts(s: &TcpStream) -> std::io::Result<(u64, u64)> {
    let fd = s.as_raw_fd();
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    #[allow(unsafe_code)]
    // SAFETY: `info` and `len` are valid for writes and `len` is `info`'s size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (len as usize) < TCPI_BYTES_RECEIVED + 8 {
        return Err(std::io::Error::other("TCP_INFO too short for byte counts"));
    }
    let at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().expect("8 bytes"));
    let (acked, received) = (at(TCPI_BYTES_ACKED), at(TCPI_BYTES_RECEIVED));
    let mut queued: libc::c_int = 0;
    #[allow(unsafe_code)]
    // SAFETY: SIOCOUTQ writes one int to the pointer given.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((received, acked + queued.max(0) as u64))
}

/// Makes the kernel run the socket's data-ready callback, which passes bytes already waiting
/// in its receive queue through the verdict program (`tcp_set_rcvlowat` calls it).
fn flush_waiting(s: &TcpStream) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    #[allow(unsafe_code)]
    // SAFETY: SO_RCVLOWAT reads one int from the pointer given, which is valid for the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `s` has reached its end of stream (`Ok(true)`), has failed (`Err`), or neither.
/// Clears its readiness when neither, so the next wait sleeps.
fn ended(s: &TcpStream) -> std::io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    let mut one = [0u8; 1];
    match s.try_io(Interest::READABLE, || {
        nix::sys::socket::recv(
            s.as_raw_fd(),
            &mut one,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)
    }) {
        Ok(0) => Ok(true),
        // Bytes left in the receive queue: make the kernel pass them on.
        Ok(_) => flush_waiting(s).map(|()| false),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// One direction of a relay: `from`'s bytes go to `to` in the kernel.
struct Way<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// Bytes user space had read from `from` before the relay began.
    consumed: u64,
    /// Bytes written to `to` before the relay began.
    written: u64,
    /// Counts the bytes moved, starting at `counted` (what user space moved before).
    count: &'a AtomicU64,
    counted: u64,
    done: bool,
}

impl Way<'_> {
    /// Counts what has reached `to` (never lowering the count: a closed socket's `TCP_INFO`
    /// may read zero). After `from`'s end, true once everything `from` received has.
    ///
    /// `TCP_INFO` counts sequence numbers: the SYN is in `to`'s acknowledged bytes from the
    /// start (so it is in `self.written` too), and `from`'s end of stream adds one to what it
    /// received.
    fn update(&self, from_ended: bool) -> std::io::Result<bool> {
        let (received, _) = counts(self.from)?;
        let (_, written) = counts(self.to)?;
        let moved = written.saturating_sub(self.written);
        self.count
            .fetch_max(self.counted + moved, Ordering::Relaxed);
        let data = received
            .saturating_sub(u64::from(from_ended))
            .saturating_sub(self.consumed);
        Ok(from_ended && moved >= data)
    }

    /// After `from`'s end: waits for its bytes to reach `to`, then shuts `to` down for writing.
    async fn finish(&mut self) -> std::io::Result<()> {
        let mut still = 0;
        let mut last = None;
        while !self.update(true)? {
            let now = self.count.load(Ordering::Relaxed);
            if last == Some(now) {
                still += 1;
                // Nothing reached `to` for 30 s: its reader stopped reading, or the kernel
                // dropped the bytes because `to` failed.
                if still > 30_000 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the relayed bytes stopped reaching the other side",
                    ));
                }
            } else {
                still = 0;
            }
            last = Some(now);
            if let Some(e) = self.to.take_error()? {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        socket2::SockRef::from(self.to).shutdown(std::net::Shutdown::Write)?;
        self.done = true;
        Ok(())
    }
}

/// A relay in the kernel; taken from [`try_start`].
pub(crate) struct Relay<'a> {
    maps: &'static Maps,
    ways: [Way<'a>; 2],
    cookies: [u64; 2],
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        for w in &self.ways {
            if !w.done {
                let _ = w.update(false);
            }
        }
        // Closing the sockets removes them from the maps; a relay dropped while its sockets
        // stay open (none is, today) must not leave them relaying.
        for c in self.cookies {
            delete(&self.maps.verdict, c);
        }
        for c in self.cookies {
            delete(&self.maps.peers, c);
        }
        self.maps.relays.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most bytes [`try_start`] reads from the client while emptying its receive queue; a client
/// still sending after this is relayed by splicing.
const MOST_EARLY: usize = 1 << 20;

/// Hands `a` ↔ `b` to the kernel, or returns `None` when the kernel relay is unavailable or
/// full, or `a` ends or keeps sending while it is prepared (the caller then writes what is
/// left in `early` to `b` and splices).
///
/// `early` holds bytes read from `a` and not yet written to `b`; `consumed` is all user space
/// has read from `a` (`early` included). The kernel hands on whole received buffers, even one
/// user space has read part of, so `a` is first read until it is empty; then `early` goes to
/// `b`. User space must have read nothing from `b`, and must not read or write either socket
/// while the relay lives.
pub(crate) async fn try_start<'a>(
    a: &'a TcpStream,
    b: &'a TcpStream,
    early: &mut bytes::BytesMut,
    mut consumed: u64,
    a_to_b: &'a AtomicU64,
    b_to_a: &'a AtomicU64,
) -> std::io::Result<Option<Relay<'a>>> {
    let Ok(maps) = available() else {
        return Ok(None);
    };
    loop {
        if early.len() > MOST_EARLY {
            return Ok(None);
        }
        early.reserve(16 * 1024);
        match a.try_read_buf(early) {
            Ok(0) => return Ok(None),
            Ok(n) => consumed += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if !early.is_empty() {
        let mut sent = 0;
        while sent < early.len() {
            b.writable().await?;
            match b.try_write(&early[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        a_to_b.fetch_add(early.len() as u64, Ordering::Relaxed);
        early.clear();
    }
    if maps.relays.fetch_add(1, Ordering::Relaxed) >= MAX_RELAYS {
        maps.relays.fetch_sub(1, Ordering::Relaxed);
        return Ok(None);
    }
    if let Some(v) = std::env::var_os("SLUICE_KR_SNDBUF") {
        let v: usize = v.to_str().unwrap().parse().unwrap();
        let _ = socket2::SockRef::from(a).set_send_buffer_size(v);
        let _ = socket2::SockRef::from(b).set_send_buffer_size(v);
    }
    let before = || -> std::io::Result<_> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        let (_, wa) = counts(a)?;
        let (_, wb) = counts(b)?;
        Ok((ca, cb, wa, wb))
    };
    let (ca, cb, wa, wb) = match before() {
        Ok(v) => v,
        Err(e) => {
            maps.relays.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    // From here the relay's drop takes its entries out of the maps and gives back its place.
    let relay = Relay {
        maps,
        ways: [
            Way {
                from: a,
                to: b,
                consumed,
                written: wb,
                count: a_to_b,
                counted: a_to_b.load(Ordering::Relaxed),
                done: false,
            },
            Way {
                from: b,
                to: a,
                consumed: 0,
                written: wa,
                count: b_to_a,
                counted: b_to_a.load(Ordering::Relaxed),
                done: false,
            },
        ],
        cookies: [ca, cb],
    };
    update(&maps.peers, ca, b.as_raw_fd(), BPF_NOEXIST)?;
    update(&maps.peers, cb, a.as_raw_fd(), BPF_NOEXIST)?;
    update(&maps.verdict, ca, a.as_raw_fd(), BPF_NOEXIST)?;
    update(&maps.verdict, cb, b.as_raw_fd(), BPF_NOEXIST)?;
    flush_waiting(a)?;
    flush_waiting(b)?;
    Ok(Some(relay))
}

impl Relay<'_> {
    /// Runs until both directions have ended or one fails.
    pub(crate) async fn run(mut self) -> std::io::Result<()> {
        loop {
            let [x, y] = &mut self.ways;
            if x.done && y.done {
                return Ok(());
            }
            let wait_x = async {
                if x.done {
                    std::future::pending::<std::io::Result<tokio::io::Ready>>().await
                } else {
                    x.from.ready(Interest::READABLE).await
                }
            };
            let wait_y = async {
                if y.done {
                    std::future::pending::<std::io::Result<tokio::io::Ready>>().await
                } else {
                    y.from.ready(Interest::READABLE).await
                }
            };
            let first = tokio::select! {
                r = wait_x => { r?; 0 }
                r = wait_y => { r?; 1 }
            };
            let way = &mut self.ways[first];
            if ended(way.from)? {
                way.finish().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The kernel relay needs root; CI runs as root, so there it must load.
    fn maps_or_skip() -> bool {
        match available() {
            Ok(_) => true,
            Err(e) => {
                #[allow(unsafe_code)]
                // SAFETY: geteuid takes nothing and cannot fail.
                let euid = unsafe { libc::geteuid() };
                assert!(euid != 0, "the kernel relay did not load as root: {e}");
                eprintln!("skipped: the kernel relay needs root ({e})");
                false
            }
        }
    }

    /// client ↔ (a | kernel relay | b) ↔ target. Returns the client's and the target's ends
    /// and the relay's task, which yields the byte counts.
    async fn pair(
        client_first: &[u8],
        target_first: &[u8],
        consumed: usize,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<std::io::Result<(u64, u64)>>,
    ) {
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (mut a, _) = front.accept().await.unwrap();
        let b = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (mut target, _) = back.accept().await.unwrap();
        client.write_all(client_first).await.unwrap();
        target.write_all(target_first).await.unwrap();
        // The worker reads the hello, and with it whatever the kernel has at that moment.
        let mut early = bytes::BytesMut::with_capacity(4096);
        while early.len() < consumed {
            a.read_buf(&mut early).await.unwrap();
        }
        let _ = early.split_to(consumed);
        let read = (consumed + early.len()) as u64;
        // Let the bytes sent first reach the relay's receive queues before it starts.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (started, on_start) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            let relay = try_start(&a, &b, &mut early, read, &up, &down)
                .await?
                .expect("the kernel relay is available");
            let _ = started.send(());
            relay.run().await?;
            Ok((up.into_inner(), down.into_inner()))
        });
        on_start.await.expect("the relay started");
        (client, target, task)
    }

    #[tokio::test]
    async fn relays_both_ways_and_passes_on_each_end_of_stream() {
        if !maps_or_skip() {
            return;
        }
        let (client, mut target, relay) = pair(b"", b"", 0).await;
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            target.read_to_end(&mut got).await.unwrap();
            target.write_all(&got).await.unwrap();
            target.shutdown().await.unwrap();
            got.len()
        });
        let (mut r, mut w) = client.into_split();
        let send = {
            let data = data.clone();
            async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
                w
            }
        };
        let mut back = Vec::new();
        let (_w, n) = tokio::join!(send, r.read_to_end(&mut back));
        n.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "the echoed bytes differ from those sent");
        assert_eq!(echo.await.unwrap(), data.len());
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (data.len() as u64, data.len() as u64));
    }

    #[tokio::test]
    async fn bytes_waiting_before_the_relay_starts_go_first_and_in_order() {
        if !maps_or_skip() {
            return;
        }
        // The client's hello (5 bytes, read by the worker) and bytes right behind it; the
        // target's banner, sent before the relay starts and followed by nothing.
        let (mut client, mut target, relay) = pair(b"HELLOearly-", b"SSH-2.0-banner\r\n", 5).await;
        let mut banner = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut banner))
            .await
            .expect("the banner sent before the relay started never reached the client")
            .unwrap();
        assert_eq!(&banner, b"SSH-2.0-banner\r\n");
        client.write_all(b"late").await.unwrap();
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), target.read_exact(&mut got))
            .await
            .expect("the client's bytes never reached the target")
            .unwrap();
        assert_eq!(&got, b"early-late");
        drop(client);
        drop(target);
        let (up, down) = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay did not end after both sides closed")
            .unwrap()
            .unwrap();
        assert_eq!((up, down), (10, 16));
    }
}
