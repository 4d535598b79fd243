//! The measurements, each over a function that opens a connection to the target along one path.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

/// Opens a connection that reaches the target (directly, or through a proxy).
pub type Dial<'a> = &'a (dyn Fn() -> anyhow::Result<TcpStream> + Sync);

/// Sends `bytes` into the sink and returns MB/s (10^6 bytes per second).
pub fn bulk(dial: Dial<'_>, bytes: u64) -> anyhow::Result<f64> {
    let mut c = dial()?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    c.write_all(b"S")?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        c.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    c.read_exact(&mut count)
        .context("while waiting for the sink's byte count")?;
    let elapsed = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        bail!("the sink received {got} bytes of {bytes}");
    }
    Ok(bytes as f64 / elapsed / 1e6)
}

/// Bulk download: `bytes` sent by the target (its `D` mode) through the path to the client;
/// MB/s from the request to the last byte.
pub fn download(dial: Dial<'_>, bytes: u64) -> anyhow::Result<f64> {
    let mut c = dial()?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut request = [0u8; 9];
    request[0] = b'D';
    request[1..].copy_from_slice(&bytes.to_be_bytes());
    c.write_all(&request)?;
    let mut got = 0u64;
    while got < bytes {
        let n = c.read(&mut buf)?;
        if n == 0 {
            bail!("the path closed after {got} of {bytes} bytes");
        }
        got += n as u64;
    }
    if got != bytes {
        bail!("the target sent {got} bytes, {bytes} were asked for");
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn echo(dial: Dial<'_>) -> anyhow::Result<TcpStream> {
    let mut c = dial()?;
    c.set_nodelay(true)?;
    c.write_all(b"E")?;
    Ok(c)
}

/// Closed-loop ping-pong of 64-byte messages; latencies in nanoseconds.
pub fn closed_loop(dial: Dial<'_>, n: usize) -> anyhow::Result<Histogram<u64>> {
    let mut c = echo(dial)?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    // Warm up the path (connection setup, first-use allocations).
    for _ in 0..100 {
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
    }
    let mut h = histogram();
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(h)
}

/// Open-loop: 64-byte messages sent at `rate` per second for `duration`, each latency timed
/// from its intended send time (wrk2 style), so a stall counts against every message it delays.
pub fn open_loop(dial: Dial<'_>, rate: u32, duration: Duration) -> anyhow::Result<Histogram<u64>> {
    let c = echo(dial)?;
    let mut reader = c.try_clone()?;
    let mut writer = c;
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, rx) = mpsc::channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(20);
    let send = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut msg = [0u8; 64];
        for k in 0..total {
            let intended = start + interval * k as u32;
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            msg[..8].copy_from_slice(&k.to_be_bytes());
            tx.send(intended)?;
            writer.write_all(&msg)?;
        }
        Ok(())
    });
    let mut h = histogram();
    let mut back = [0u8; 64];
    for _ in 0..total {
        reader.read_exact(&mut back)?;
        let intended = rx.recv()?;
        h.record(intended.elapsed().as_nanos() as u64)?;
    }
    send.join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(h)
}

/// New connection → first echoed byte, `n` times back to back; nanoseconds.
pub fn setup(dial: Dial<'_>, n: usize) -> anyhow::Result<Histogram<u64>> {
    setup_paced(dial, n, Duration::ZERO)
}

/// The pause before each connection of the harness's paced new-connection figure: longer than
/// a `-transport tls` connection's handshakes take, as between an application's connections
/// that are not opened back to back.
pub const SETUP_GAP: Duration = Duration::from_millis(2);

/// New connection → first echoed byte, `n` times, each after a pause of `gap` (not timed);
/// nanoseconds.
pub fn setup_paced(dial: Dial<'_>, n: usize, gap: Duration) -> anyhow::Result<Histogram<u64>> {
    let mut h = histogram();
    for _ in 0..n {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        let mut c = dial()?;
        c.set_nodelay(true)?;
        c.write_all(b"Ex")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(h)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// Median of a non-empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
