//! Sluice as users run it: `sluice dev` and `sluice connect` as real processes.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_proto::frames::{Frame, NONCE_LEN};

use crate::procs::Proc;

pub struct Dev {
    pub proc: Proc,
    pub api: String,
    pub worker: String,
    pub bin: PathBuf,
    pub home: tempfile::TempDir,
    pub bearer: String,
}

impl Dev {
    pub fn start(bin: &Path, target_port: u16) -> anyhow::Result<Self> {
        Self::start_with(bin, target_port, &[])
    }

    /// [`Dev::start`] with more flags for `sluice dev` (`-io-driver uring`).
    pub fn start_with(bin: &Path, target_port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "dev",
            "-api-addr",
            "127.0.0.1:0",
            "-proxy-addr",
            "127.0.0.1:0",
            "-host-address",
            "127.0.0.1",
        ])
        .args([
            "-target-default-port",
            &target_port.to_string(),
            "-worker-allow-plaintext",
        ])
        .args(extra)
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("SLUICE_LOG", "warn");
        let mut proc = Proc::spawn(cmd)?;
        let field = |l: &str, k: &str| l.trim().strip_prefix(k).map(|v| v.trim().to_owned());
        let api = proc.wait_line(Duration::from_secs(30), |l| field(l, "API Address:"))?;
        let worker = proc.wait_line(Duration::from_secs(30), |l| {
            field(l, "Worker Proxy Address:")
        })?;
        proc.wait_line(Duration::from_secs(30), |l| {
            l.contains("server started").then_some(())
        })?;
        let mut dev = Self {
            proc,
            api,
            worker,
            bin: bin.to_owned(),
            home,
            bearer: String::new(),
        };
        let out = dev
            .cli(&[
                "authenticate",
                "password",
                "-login-name",
                "admin",
                "-password",
                "password",
                "-format",
                "json",
            ])
            .output()?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("authenticate output")?;
        dev.bearer = v["attributes"]["token"]
            .as_str()
            .context("no token")?
            .to_owned();
        Ok(dev)
    }

    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("SLUICE_ADDR", &self.api);
        if !self.bearer.is_empty() {
            c.env("SLUICE_TOKEN", &self.bearer);
        }
        c
    }

    /// Starts `sluice connect` over `transport`; returns it, its port, session id and the time
    /// from spawn to "Proxy listening".
    pub fn connect(&self, transport: &str) -> anyhow::Result<(Proc, u16, String, Duration)> {
        let t = Instant::now();
        let mut p = Proc::spawn(self.cli(&[
            "connect",
            "-transport",
            transport,
            "-target-id",
            "ttcp_1234567890",
        ]))?;
        p.wait_line(Duration::from_secs(30), |l| {
            l.contains("Proxy listening information:").then_some(())
        })?;
        let ready = t.elapsed();
        let field = |l: &str, k: &str| l.trim().strip_prefix(k).map(|v| v.trim().to_owned());
        let port = p
            .wait_line(Duration::from_secs(5), |l| field(l, "Port:"))?
            .parse()?;
        let sid = p.wait_line(Duration::from_secs(5), |l| field(l, "Session ID:"))?;
        Ok((p, port, sid, ready))
    }

    /// A fresh authorization token, in binary form.
    pub fn token(&self) -> anyhow::Result<Vec<u8>> {
        let out = self
            .cli(&[
                "targets",
                "authorize-session",
                "-id",
                "ttcp_1234567890",
                "-format",
                "json",
            ])
            .output()?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("authorize output")?;
        let text = v["item"]["authorization_token"]
            .as_str()
            .context("no token")?;
        Ok(sluice_proto::token::text_to_binary(text)?)
    }
}

/// The worker hop: the harness presents the token itself over the plaintext transport, like a
/// client of a one-hop proxy, and gets a socket that reaches the target.
pub fn worker_hop(worker: &str, token: &[u8], nonce: [u8; NONCE_LEN]) -> anyhow::Result<TcpStream> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(worker)?;
    s.set_nodelay(true)?;
    s.write_all(
        &Frame::StreamHello {
            nonce,
            token: token.to_vec(),
        }
        .to_vec(),
    )?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if let Some((frame, used)) = Frame::decode(&buf)? {
            if used != buf.len() {
                bail!("the worker sent bytes after its answer");
            }
            return match frame {
                Frame::StreamAccepted { .. } => Ok(s),
                Frame::Refused(r) => bail!("worker refused: {}", r.message),
                other => bail!("unexpected answer {other:?}"),
            };
        }
        // Byte at a time: the answer is a few bytes and nothing follows it before we write.
        s.read_exact(&mut byte)?;
        buf.push(byte[0]);
    }
}
