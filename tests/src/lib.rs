//! Harness for end-to-end tests: starts `sluice dev`, an OpenSSH server and clients as real
//! processes on 127.0.0.1, with every wait bounded.
#![deny(unsafe_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `sluice` binary under test (built by `cargo build` before the tests run).
pub fn sluice_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let bin = target.join("debug").join("sluice");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "-q", "-p", "sluice-cli", "--bin", "sluice"])
            .current_dir(root);
        // `cargo test` sets these for this process (the package's name, its manifest…). ring's
        // build notices them, so passing them on would rebuild ring and everything above it
        // here, and again at the next command-line build.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*key)
            {
                build.env_remove(&*key);
            }
        }
        let status = build.status().expect("cargo build runs");
        assert!(status.success(), "building the sluice binary failed");
    });
    bin
}

/// A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 themselves).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A loopback port free for UDP and for TCP at once: a worker binds both on one port number.
pub fn free_udp_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free loopback UDP port");
        let port = udp
            .local_addr()
            .expect("a bound UDP socket has an address")
            .port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port was free for both UDP and TCP in 100 tries")
}

/// A temporary directory only its owner may enter, as Sluice requires of a directory that
/// holds secrets (`-data-dir`, `-auth-storage-path`).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a temporary directory")
}

/// Polls `f` every 50 ms until it returns `Some`, failing the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or_explain(what, limit, f, String::new)
}

/// [`wait_for`], and on timeout the failure also carries what `explain` returns then.
pub fn wait_for_or_explain<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}{}",
            explain()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to 20 s for an ssh started with `echo started` to print it. On timeout the test
/// fails with what ssh, `connect` and the worker wrote, so a failure says where it stopped.
pub fn wait_for_ssh_start(ssh: &Proc, connect: &Proc, worker: &Proc) {
    wait_for_or_explain(
        "ssh to start",
        Duration::from_secs(20),
        || ssh.stdout().contains("started").then_some(()),
        || {
            format!(
                "\n--- ssh stderr:\n{}\n--- connect stdout:\n{}\n--- connect stderr:\n{}\n\
                 --- worker stderr:\n{}",
                ssh.stderr(),
                connect.stdout(),
                connect.stderr(),
                worker.stderr()
            )
        },
    )
}

/// SIGTERM, then SIGKILL if the process is still running after `limit`.
fn kill_gently(child: &mut Child, limit: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process whose stdout and stderr are collected in the background.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("process starts");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        for (pipe, buf) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                stdout.clone(),
            ),
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
                stderr.clone(),
            ),
        ] {
            std::thread::spawn(move || {
                let mut r = BufReader::new(pipe);
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    buf.lock().unwrap().push_str(&line);
                    line.clear();
                }
            });
        }
        Self {
            child,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for exit, failing the test after `limit`.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait works") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "process still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        kill_gently(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Proc {
    /// A process still running when its test ends is stopped as a user would stop it
    /// (SIGTERM), so that `sluice dev` removes its temporary data directory; SIGKILL follows
    /// after 3 s. Tests that mean to kill a process mid-flight do so themselves.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_gently(&mut self.child, Duration::from_secs(3));
        }
    }
}

/// A running `sluice dev` with its own config directory (so stored tokens never mix).
pub struct Dev {
    pub proc: Proc,
    pub api: String,
    pub home: tempfile::TempDir,
    pub args: Vec<String>,
    /// The CA the API's certificate chains to (`sluice server` serves HTTPS).
    pub ca: Option<std::path::PathBuf>,
}

impl Dev {
    /// Starts `sluice dev` on free loopback ports with `extra` flags, and logs in as admin.
    pub fn start(extra: &[&str]) -> Self {
        let home = tempfile::tempdir().unwrap();
        Self::start_in(home, extra)
    }

    /// Starts `sluice dev` whose generated host and targets point at `sshd`.
    pub fn for_sshd(sshd: &Sshd, extra: &[&str]) -> Self {
        Self::for_sshd_prepared(sshd, extra, |_| {})
    }

    /// As [`Dev::for_sshd`], with `prepare` applied to the command before it is spawned.
    pub fn for_sshd_prepared(
        sshd: &Sshd,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Self {
        let port = sshd.port.to_string();
        let mut args = vec![
            "-host-address",
            "127.0.0.1",
            "-target-default-port",
            port.as_str(),
        ];
        args.extend_from_slice(extra);
        Self::start_prepared(tempfile::tempdir().unwrap(), &args, prepare)
    }

    pub fn start_in(home: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_prepared(home, extra, |_| {})
    }

    /// As [`Dev::start_in`], with `prepare` applied to the command before it is spawned (say,
    /// [`deny_io_uring`]).
    fn start_prepared(
        home: tempfile::TempDir,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Self {
        let mut args: Vec<String> = vec![
            "dev".into(),
            "-api-addr".into(),
            "127.0.0.1:0".into(),
            "-proxy-addr".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(sluice_bin());
        cmd.args(&args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("SLUICE_LOG", "info,quinn=warn");
        prepare(&mut cmd);
        let proc = Proc::spawn(cmd);
        let mut proc = proc;
        let api = wait_for("sluice dev to start", Duration::from_secs(30), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("sluice dev exited ({status}):\n{}", proc.stderr());
            }
            let out = proc.stdout();
            if !out.contains("server started") {
                return None;
            }
            out.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("API Address:")
                    .map(|a| a.trim().to_owned())
            })
        });
        let dev = Self {
            proc,
            api,
            home,
            args,
            ca: None,
        };
        let out = dev.sluice(&[
            "authenticate",
            "password",
            "-login-name",
            "admin",
            "-password",
            "env://SLUICE_TEST_PW",
        ]);
        assert!(
            out.status.success(),
            "authenticate failed: {}",
            text(&out.stderr)
        );
        dev
    }

    /// Authenticates without storing the token and returns the JSON `authenticate` printed;
    /// the token is at `["attributes"]["token"]`.
    pub fn login(&self, login: &str, password: &str) -> serde_json::Value {
        let out = self.sluice(&[
            "authenticate",
            "password",
            "-login-name",
            login,
            "-password",
            password,
            "-format",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{login} could not log in: {}",
            text(&out.stderr)
        );
        serde_json::from_str(&text(&out.stdout)).expect("authenticate prints JSON")
    }

    /// The auth token of `login`, not stored (pass it with `-token`).
    pub fn login_token(&self, login: &str, password: &str) -> String {
        self.login(login, password)["attributes"]["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    /// A `sluice` command against this controller, as its user.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(sluice_bin());
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join(".config"))
            .env("SLUICE_ADDR", &self.api)
            .env("SLUICE_TEST_PW", "password")
            .env_remove("SLUICE_TOKEN")
            .stdin(Stdio::null());
        match &self.ca {
            Some(ca) => cmd.env("SLUICE_CACERT", ca),
            None => cmd.env_remove("SLUICE_CACERT"),
        };
        cmd
    }

    /// Runs a `sluice` command to completion (bounded by 60 s).
    pub fn sluice(&self, args: &[&str]) -> Output {
        let mut p = Proc::spawn(self.cmd(args));
        let status = p.wait(Duration::from_secs(60));
        Output {
            status,
            stdout: p.stdout().into_bytes(),
            stderr: p.stderr().into_bytes(),
        }
    }

    /// Runs a command that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sluice(args);
        assert!(
            out.status.success(),
            "sluice {args:?} failed\nstdout:\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// The value of `Key:` in a table output.
    pub fn field(out: &str, key: &str) -> Option<String> {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
    }

    /// `sessions read -id` as a string.
    pub fn read_session(&self, id: &str) -> String {
        self.ok(&["sessions", "read", "-id", id])
    }

    /// Waits until the session's status is `status`.
    pub fn wait_status(&self, id: &str, status: &str, limit: Duration) -> String {
        wait_for(&format!("session {id} to be {status}"), limit, || {
            let out = self.read_session(id);
            (Self::field(&out, "Status").as_deref() == Some(status)).then_some(out)
        })
    }

    /// Stops the process (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// Ports and directories of a `sluice server`, kept so it can be killed and started again.
pub struct ServerSetup {
    pub data_dir: tempfile::TempDir,
    pub api_port: u16,
    pub cluster_port: u16,
    pub host_address: String,
    pub target_port: u16,
    /// Put at the top of controller.toml (for example a `[controller]` section).
    pub controller_toml: String,
}

impl ServerSetup {
    pub fn new(target_port: u16) -> Self {
        Self {
            data_dir: tempfile::tempdir().unwrap(),
            api_port: free_port(),
            cluster_port: free_port(),
            host_address: "127.0.0.1".into(),
            target_port,
            controller_toml: String::new(),
        }
    }

    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    /// The store directory `sluice server` is given (`-data-dir`).
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.path().join("store")
    }

    /// The `sluice server` command of this setup, with `home` as its HOME.
    pub fn command(&self, home: &std::path::Path) -> Command {
        let config = self.data_dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "{}[initial]\nadmin_password = \"env://SLUICE_TEST_PW\"\nuser_password = \"env://SLUICE_TEST_PW\"\n\
                 host_address = \"{}\"\ntarget_default_port = {}\n",
                self.controller_toml, self.host_address, self.target_port
            ),
        )
        .unwrap();
        let mut cmd = Command::new(sluice_bin());
        cmd.args(["server", "-config"])
            .arg(&config)
            .arg("-data-dir")
            .arg(self.data_dir.path().join("store"))
            .args([
                "-api-addr",
                &format!("127.0.0.1:{}", self.api_port),
                "-cluster-addr",
                &self.cluster_addr(),
            ])
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("SLUICE_TEST_PW", "password")
            .env("SLUICE_LOG", "info,quinn=warn");
        cmd
    }

    fn spawn(&self, home: &std::path::Path) -> Proc {
        let mut proc = Proc::spawn(self.command(home));
        wait_for("sluice server to start", Duration::from_secs(30), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("sluice server exited ({status}):\n{}", proc.stderr());
            }
            proc.stdout().contains("server started").then_some(())
        });
        proc
    }
}

impl Dev {
    /// Starts `sluice server` (no worker) per `setup`, and logs in as admin.
    pub fn server(setup: &ServerSetup) -> Self {
        let home = tempfile::tempdir().unwrap();
        let proc = setup.spawn(home.path());
        let dev = Self {
            proc,
            api: format!("https://127.0.0.1:{}", setup.api_port),
            home,
            args: vec![],
            ca: Some(setup.data_dir.path().join("store").join("ca.pem")),
        };
        dev.ok(&[
            "authenticate",
            "password",
            "-login-name",
            "admin",
            "-password",
            "env://SLUICE_TEST_PW",
        ]);
        dev
    }

    /// Starts the server of `setup` again in place of this one (after it was killed).
    pub fn restart_server(&mut self, setup: &ServerSetup) {
        self.proc = setup.spawn(self.home.path());
    }

    /// Registers a worker and returns `(worker id, activation token)`.
    pub fn create_worker(&self, name: &str) -> (String, String) {
        let out = self.ok(&[
            "workers",
            "create",
            "controller-led",
            "-name",
            name,
            "-format",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        (
            v["item"]["id"].as_str().unwrap().to_owned(),
            v["item"]["controller_generated_activation_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    /// The JSON item of `sessions read`.
    pub fn session_json(&self, id: &str) -> serde_json::Value {
        let out = self.ok(&["sessions", "read", "-id", id, "-format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["item"].clone()
    }
}

/// A target that echoes every connection back, on a free loopback port; returns the port.
pub fn echo_target() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut back = conn.try_clone().unwrap();
                let mut conn = conn;
                let _ = std::io::copy(&mut conn, &mut back);
            });
        }
    });
    port
}

/// A `sluice worker` process with its own identity directory.
pub struct WorkerProc {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub args: Vec<String>,
}

impl WorkerProc {
    /// Starts a worker linked to `setup`'s controller, activating with `token` if given.
    pub fn start(setup: &ServerSetup, token: Option<&str>, tags: &[&str]) -> Self {
        Self::start_via(&setup.cluster_addr(), token, tags)
    }

    /// Starts a worker whose controller link goes to `upstream` (for example a [`Cuttable`]).
    pub fn start_via(upstream: &str, token: Option<&str>, tags: &[&str]) -> Self {
        Self::start_configured(upstream, token, tags, "")
    }

    /// Like [`WorkerProc::start_via`], with `config` as the worker's TOML file (flags still
    /// give the address, upstream, identity directory and tags).
    pub fn start_configured(
        upstream: &str,
        token: Option<&str>,
        tags: &[&str],
        config: &str,
    ) -> Self {
        let dir = private_tempdir();
        let port = free_udp_port();
        let config_path = dir.path().join("worker.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut args: Vec<String> = vec![
            "worker".into(),
            "-config".into(),
            config_path.display().to_string(),
            "-proxy-addr".into(),
            format!("127.0.0.1:{port}"),
            "-initial-upstream".into(),
            upstream.to_owned(),
            "-auth-storage-path".into(),
            dir.path().display().to_string(),
        ];
        for t in tags {
            args.push("-tag".into());
            args.push(t.to_string());
        }
        if let Some(t) = token {
            args.push("-activation-token".into());
            args.push(t.into());
        }
        let mut w = Self {
            proc: Self::spawn(&args),
            dir,
            port,
            args,
        };
        w.wait_linked();
        w
    }

    fn spawn(args: &[String]) -> Proc {
        let mut cmd = Command::new(sluice_bin());
        let log = std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info,quinn=warn".into());
        cmd.args(args).env("SLUICE_LOG", log);
        Proc::spawn(cmd)
    }

    /// Waits until the worker logs that it is linked.
    pub fn wait_linked(&mut self) {
        self.wait_linked_times(1);
    }

    /// Waits until the worker has linked `n` times in all (a relink after an outage).
    pub fn wait_linked_times(&mut self, n: usize) {
        wait_for("the worker to link", Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("sluice worker exited ({status}):\n{}", self.proc.stderr());
            }
            (self
                .proc
                .stderr()
                .matches("linked to the controller")
                .count()
                >= n)
                .then_some(())
        });
    }

    /// Stops the worker (SIGTERM) and starts it again with the identity it stored at
    /// activation and without its activation token; the new process is returned.
    pub fn restart_from_identity(&mut self) -> Proc {
        self.proc.stop();
        // `start` puts the activation token last.
        let end = self
            .args
            .iter()
            .position(|a| a == "-activation-token")
            .unwrap_or(self.args.len());
        Self::spawn(&self.args[..end])
    }

    /// The worker's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.proc.child.id())
    }

    /// Kills the worker with SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// Resident memory (VmRSS) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Makes `io_uring_setup(2)` fail with `ENOSYS` in the process `cmd` starts, as on a kernel
/// without io_uring, through a seccomp filter installed between fork and exec. Only the spawned
/// process (and its children) is affected; everything else on the machine keeps io_uring.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[allow(unsafe_code)] // the one unsafe block of the test crate: `pre_exec`
pub fn deny_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    /// `AUDIT_ARCH_X86_64`: seccomp_data.arch of a 64-bit x86 system call.
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // seccomp_data: the system call number at offset 0, the architecture at offset 4.
    let filter = [
        op(LD_ABS_W, 0, 0, 4),
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_ABS_W, 0, 0, 0),
        op(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec the closure only makes two prctl(2) calls, which are
    // async-signal-safe, on a filter that lives in the closure.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `sluice connect` (or `proxy`) left running, with its local port.
pub struct Connect {
    pub proc: Proc,
    pub port: u16,
    pub session_id: String,
}

impl Connect {
    pub fn start(dev: &Dev, args: &[&str]) -> Self {
        Self::from_cmd(dev.cmd(args))
    }

    /// Like [`Connect::start`], for a command already set up (another user's token or home).
    pub fn from_cmd(cmd: Command) -> Self {
        let proc = Proc::spawn(cmd);
        let (port, session_id) = wait_for("connect to listen", Duration::from_secs(30), || {
            let out = proc.stdout();
            let err = proc.stderr();
            assert!(!err.contains("Error:"), "connect failed: {err}");
            let port = Dev::field(&out, "Port")?.parse().ok()?;
            let sid = Dev::field(&out, "Session ID")?;
            Some((port, sid))
        });
        Self {
            proc,
            port,
            session_id,
        }
    }
}

/// An OpenSSH server on a free loopback port, accepting one generated key for the current user.
pub struct Sshd {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub user: String,
}

impl Sshd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen runs (install openssh-client)");
            assert!(st.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let user = text(&Command::new("id").arg("-un").output().unwrap().stdout)
            .trim()
            .to_owned();
        let port = free_port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is installed (apt-get install openssh-server)");
        let mut cmd = Command::new(sshd);
        cmd.arg("-D").arg("-e").arg("-f").arg(d.join("sshd_config"));
        let proc = Proc::spawn(cmd);
        wait_for("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self {
            proc,
            port,
            dir,
            user,
        }
    }

    /// ssh options that authenticate with the generated key and skip host-key prompts.
    pub fn client_opts(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.dir.path().join("client_key").display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ]
    }

    /// An `ssh` command to `port` on 127.0.0.1 running `remote`.
    pub fn ssh(&self, port: u16, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.client_opts())
            .arg("-p")
            .arg(port.to_string())
            .arg("-l")
            .arg(&self.user)
            .arg("127.0.0.1")
            .arg(remote)
            .stdin(Stdio::null());
        c
    }
}

/// A TCP relay on 127.0.0.1 that can be cut (every connection closed, new ones refused) and
/// mended, to take a link down while both of its ends stay alive.
pub struct Cuttable {
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    /// Relays connections made to [`Cuttable::addr`] to `to`.
    pub fn start(to: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k, to) = (cut.clone(), conns.clone(), to.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = std::net::TcpStream::connect(&to) else {
                    continue;
                };
                let mut list = k.lock().unwrap();
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        list.push(s);
                    }
                }
                drop(list);
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { addr, cut, conns }
    }

    /// Closes every relayed connection and refuses new ones until [`Cuttable::mend`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sends one HTTP/1.1 request to a plain-HTTP API (`sluice dev`) as given, and returns
/// `(status, body)`. Errors when the API cannot be reached or answers nothing.
pub fn http_request(
    api: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(b) = bearer {
        req.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let _ = s.write_all(body); // an oversized body may be refused before it is all sent
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Ok((status, body))
}

/// Opens a connection to sshd through `port` and reads its banner; sshd then waits for the
/// client, which says nothing, so the relay sits idle. Returns the connection and the banner's
/// length.
pub fn idle_ssh_connection(port: u16) -> (std::net::TcpStream, usize) {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut banner = [0u8; 64];
    let n = std::io::Read::read(&mut tcp, &mut banner).unwrap();
    assert!(banner[..n].starts_with(b"SSH-"), "{:?}", &banner[..n]);
    (tcp, n)
}

/// Sends SIGUSR1 (the state report) to `p`.
pub fn sigusr1(p: &Proc) {
    let kill = std::process::Command::new("kill")
        .args(["-USR1", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}
