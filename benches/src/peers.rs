//! The proxies users would otherwise pick, each started on loopback with a temporary config
//! (`benches/install-peers.sh` installs them from Debian). A peer that is not installed is
//! skipped and said so.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{free_port, have, wait_listening, Proc};

/// A running peer proxy forwarding `port` to the target.
pub struct Peer {
    pub name: String,
    pub port: u16,
    pub procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Peer {
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

fn haproxy(target: u16, splice: bool) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let opts = if splice {
        "    option splice-request\n    option splice-response\n"
    } else {
        ""
    };
    let cfg = format!(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
         listen fwd\n    bind 127.0.0.1:{port}\n{opts}    server s1 127.0.0.1:{target}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let p = Proc::spawn(cmd)?;
    wait_listening(port, Duration::from_secs(10))?;
    Ok(Peer {
        name: if splice {
            "haproxy+splice".into()
        } else {
            "haproxy".into()
        },
        port,
        procs: vec![p],
        _dir: dir,
    })
}

fn socat(target: u16) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut cmd = Command::new("socat");
    cmd.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("TCP:127.0.0.1:{target}"));
    let p = Proc::spawn(cmd)?;
    wait_listening(port, Duration::from_secs(10))?;
    Ok(Peer {
        name: "socat".into(),
        port,
        procs: vec![p],
        _dir: dir,
    })
}

fn nginx(target: u16) -> anyhow::Result<Peer> {
    let module = ["/usr/lib/nginx/modules/ngx_stream_module.so"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| {
            anyhow::anyhow!("nginx stream module not installed (libnginx-mod-stream)")
        })?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let d = dir.path().display();
    let cfg = format!(
        "load_module {module};\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 20000; }}\nstream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{target}; proxy_half_close on; }} }}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&path).arg("-p").arg(dir.path());
    let p = Proc::spawn(cmd)?;
    wait_listening(port, Duration::from_secs(10))?;
    Ok(Peer {
        name: "nginx".into(),
        port,
        procs: vec![p],
        _dir: dir,
    })
}

fn ssh_forward(target: u16) -> anyhow::Result<Peer> {
    let sshd = ["/usr/sbin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow::anyhow!("sshd not installed"))?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for key in ["host_key", "client_key"] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(key))
            .status()?;
        anyhow::ensure!(st.success(), "ssh-keygen failed");
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
    let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
        .trim()
        .to_owned();
    let sport = free_port();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {sport}\nListenAddress 127.0.0.1\nHostKey {dd}/host_key\nPidFile {dd}/sshd.pid\n\
             AuthorizedKeysFile {dd}/authorized_keys\nPasswordAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\nLogLevel ERROR\n",
            dd = d.display()
        ),
    )?;
    let _ = std::fs::create_dir_all("/run/sshd");
    let mut cmd = Command::new(sshd);
    cmd.arg("-D").arg("-f").arg(d.join("sshd_config"));
    let server = Proc::spawn(cmd)?;
    wait_listening(sport, Duration::from_secs(10))?;
    let port = free_port();
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-N",
        "-c",
        "aes128-gcm@openssh.com",
        "-o",
        "StrictHostKeyChecking=no",
    ])
    .args([
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ])
    .arg("-i")
    .arg(d.join("client_key"))
    .arg("-p")
    .arg(sport.to_string())
    .arg("-L")
    .arg(format!("127.0.0.1:{port}:127.0.0.1:{target}"))
    .arg(format!("{user}@127.0.0.1"));
    let client = Proc::spawn(cmd)?;
    wait_listening(port, Duration::from_secs(10))?;
    Ok(Peer {
        name: "ssh -L aes128-gcm".into(),
        port,
        procs: vec![server, client],
        _dir: dir,
    })
}

/// Starts every installed peer that `wanted` accepts (by the name it is started under); returns
/// them and a line per skipped one.
pub fn start_all(
    target: u16,
    quick: bool,
    wanted: impl Fn(&str) -> bool,
) -> (Vec<Peer>, Vec<String>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    let mut try_start = |name: &str, prog: &str, f: &dyn Fn() -> anyhow::Result<Peer>| {
        if !wanted(name) {
            return;
        }
        if !have(prog) {
            skipped.push(format!(
                "{name}: not installed (bash benches/install-peers.sh)"
            ));
            return;
        }
        match f() {
            Ok(p) => peers.push(p),
            Err(e) => skipped.push(format!("{name}: {e:#}")),
        }
    };
    try_start("haproxy+splice", "haproxy", &|| haproxy(target, true));
    if !quick {
        try_start("haproxy", "haproxy", &|| haproxy(target, false));
        try_start("nginx", "nginx", &|| nginx(target));
        try_start("socat", "socat", &|| socat(target));
    }
    try_start("ssh -L", "ssh", &|| ssh_forward(target));
    (peers, skipped)
}
