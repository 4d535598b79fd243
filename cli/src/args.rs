//! Command-line surface (Boundary's spelling) and dispatch.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Go-style single-dash long flags (`-target-id`) become `--target-id`, as Boundary users type
/// them. Single-letter flags, negative numbers, `-` and everything after `--` are left alone.
pub fn normalize(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || rest {
            out.push(a);
            continue;
        }
        match a.to_str() {
            Some("--") => {
                rest = true;
                out.push(a);
            }
            Some(s)
                if s.len() > 2
                    && s.starts_with('-')
                    && !s.starts_with("--")
                    && s.as_bytes()[1].is_ascii_alphabetic() =>
            {
                out.push(format!("-{s}").into());
            }
            _ => out.push(a),
        }
    }
    out
}

/// Parses normalized arguments. As with Go's flag package, a flag given twice takes the last
/// value (scripts append overrides to a base command line).
pub fn parse(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    fn last_wins(cmd: clap::Command) -> clap::Command {
        cmd.args_override_self(true).mut_subcommands(last_wins)
    }
    let matches = last_wins(Cli::command()).try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Identity-aware session proxy")]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Controller API address
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADDR",
        default_value = "http://127.0.0.1:9200"
    )]
    pub addr: String,
    /// Auth token: the token itself, env://VAR or file://PATH (default: the stored token)
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// PEM file of the CA that signed the controller's API certificate (`sluice server`
    /// prints its path as "API CA Certificate")
    #[arg(long, global = true, env = "SLUICE_CACERT")]
    pub tls_ca_cert: Option<std::path::PathBuf>,
    /// Skip verification of the API's certificate (testing only)
    #[arg(long, global = true, env = "SLUICE_TLS_INSECURE")]
    pub tls_insecure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a controller, a worker and a store in one process with generated resources
    Dev(DevArgs),
    /// Run a controller (API, cluster listener and store) from a TOML configuration
    Server(ServerArgs),
    /// Run a worker that links to a controller, from a TOML configuration
    Worker(WorkerArgs),
    /// Workers registered with the controller
    #[command(subcommand)]
    Workers(Workers),
    /// Scopes
    #[command(subcommand)]
    Scopes(Scopes),
    /// Static host catalogs
    #[command(subcommand)]
    HostCatalogs(HostCatalogs),
    /// Static hosts
    #[command(subcommand)]
    Hosts(Hosts),
    /// Static host sets
    #[command(subcommand)]
    HostSets(HostSets),
    /// Revoke the stored auth token and forget it
    Logout,
    /// Auth tokens (yours; every one for an administrator)
    #[command(subcommand)]
    AuthTokens(AuthTokens),
    /// Users
    #[command(subcommand)]
    Users(Users),
    /// Password accounts
    #[command(subcommand)]
    Accounts(Accounts),
    /// Authenticate and store an auth token
    #[command(subcommand)]
    Authenticate(Authenticate),
    /// Targets
    #[command(subcommand)]
    Targets(Targets),
    /// Sessions
    #[command(subcommand)]
    Sessions(Sessions),
    /// Open a session to a target and proxy a local port to it
    Connect(ConnectArgs),
    /// Use an authorization token (Boundary's pre-1.0 name for `connect -authz-token`)
    Proxy(ProxyArgs),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address of the API listener
    #[arg(long, default_value = "127.0.0.1:9200")]
    pub api_addr: String,
    /// Address of the worker's proxy listener (QUIC, UDP)
    #[arg(long, default_value = "127.0.0.1:9202")]
    pub proxy_addr: String,
    /// Keep the store here across restarts (default: a temporary directory removed at exit)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the generated host
    #[arg(long, default_value = "localhost")]
    pub host_address: String,
    /// Default port of the generated targets
    #[arg(long, default_value_t = 22)]
    pub target_default_port: u16,
    /// Maximum session length of the generated targets, in seconds
    #[arg(long, default_value_t = 28_800)]
    pub target_session_max_seconds: u32,
    /// Connections a session of the generated targets allows (-1: unlimited)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub target_session_connection_limit: i32,
    /// Login name of the generated admin
    #[arg(long, default_value = "admin")]
    pub login_name: String,
    /// Password of the generated admin
    #[arg(long, default_value = "password")]
    pub password: String,
    /// Worker runtime threads (0: one per core)
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Let clients use the plaintext `tcp` transport (trusted networks and measurements only)
    #[arg(long)]
    pub worker_allow_plaintext: bool,
    /// How the worker's threads wait for I/O: epoll, or uring (io_uring for plaintext relays;
    /// falls back to epoll where io_uring is unavailable)
    #[arg(long, default_value = "epoll")]
    pub io_driver: sluice_dataplane::IoDriver,
    /// Microseconds a worker thread keeps polling instead of sleeping after relaying a small
    /// transfer, which cuts the latency it adds to interactive traffic (0: sleep at once; the
    /// default is 0 on a machine with one CPU)
    #[arg(
        long,
        default_value_t = sluice_dataplane::default_busy_poll().as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=crate::worker::MAX_BUSY_POLL_US)
    )]
    pub busy_poll_us: u64,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Path of the controller's TOML configuration
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `data_dir`
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `[api] address`
    #[arg(long)]
    pub api_addr: Option<String>,
    /// Overrides `[cluster] address`
    #[arg(long)]
    pub cluster_addr: Option<String>,
    /// Overrides `auth_token_time_to_live` (for example 168h or 30m)
    #[arg(long)]
    pub auth_token_ttl: Option<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Path of the worker's TOML configuration
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `name`
    #[arg(long)]
    pub name: Option<String>,
    /// Overrides `[listener] address`
    #[arg(long)]
    pub proxy_addr: Option<String>,
    /// Overrides `public_addr`
    #[arg(long)]
    pub public_addr: Option<String>,
    /// Overrides `initial_upstreams` (repeat for several controllers)
    #[arg(long)]
    pub initial_upstream: Vec<String>,
    /// Overrides `auth_storage_path`
    #[arg(long)]
    pub auth_storage_path: Option<PathBuf>,
    /// Overrides `controller_generated_activation_token` (the token, env://VAR or file://PATH)
    #[arg(long)]
    pub activation_token: Option<String>,
    /// Adds a tag, KEY=VALUE (repeat for more)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Overrides `io_driver` (epoll or uring)
    #[arg(long)]
    pub io_driver: Option<sluice_dataplane::IoDriver>,
    /// Overrides `threads`: worker runtime threads (0: one per core)
    #[arg(long)]
    pub workers: Option<usize>,
    /// Overrides `busy_poll_us`: microseconds to keep polling after a small transfer
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=crate::worker::MAX_BUSY_POLL_US))]
    pub busy_poll_us: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Workers {
    /// Register a worker
    #[command(subcommand)]
    Create(CreateWorker),
    /// List workers
    List,
    /// Read a worker
    Read {
        #[arg(long)]
        id: String,
    },
    /// Delete a worker: its certificate stops working and its sessions are canceled
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Scopes {
    /// Create an org (in global) or a project (in an org)
    Create {
        /// The parent: global for an org, an org id for a project
        #[arg(long, default_value = "global")]
        scope_id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the scopes in a scope (global lists orgs)
    List {
        #[arg(long, default_value = "global")]
        scope_id: String,
        /// Also list the projects of the orgs
        #[arg(long)]
        recursive: bool,
    },
    Read {
        #[arg(long)]
        id: String,
    },
    /// Change a name or description; stale versions are refused
    Update {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// The version you read; without it the current one is read first
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete a scope with everything in it; its sessions are canceled
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Replace the token-signing key; tokens already issued stay valid until they expire
    RotateKeys {
        #[arg(long, default_value = "global")]
        scope_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreateWorker {
    /// Register a worker and print the one-time activation token it starts with
    ControllerLed {
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Authenticate {
    /// With a login name and password
    Password(PasswordArgs),
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    #[arg(long, default_value = "ampw_1234567890")]
    pub auth_method_id: String,
    #[arg(long)]
    pub login_name: String,
    /// env://VAR, file://PATH or the password itself; prompted for when omitted
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Targets {
    /// Authorize a session and print its authorization token
    AuthorizeSession {
        #[arg(long)]
        id: String,
        #[arg(long)]
        host_id: Option<String>,
    },
    /// List the targets of a project
    List {
        #[arg(long)]
        scope_id: String,
    },
    /// Read a target
    Read {
        #[arg(long)]
        id: String,
    },
    /// Change a target
    #[command(subcommand)]
    Update(UpdateTarget),
    /// Create a target
    #[command(subcommand)]
    Create(CreateTarget),
    /// Delete a target; its sessions are canceled
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Add host sets as sources of a target
    AddHostSources(HostSourcesArgs),
    /// Remove host sets from the sources of a target
    RemoveHostSources(HostSourcesArgs),
    /// Replace the host sources of a target
    SetHostSources(HostSourcesArgs),
}

#[derive(Debug, Args)]
pub struct HostSourcesArgs {
    #[arg(long)]
    pub id: String,
    /// A host set id (repeat for more)
    #[arg(long)]
    pub host_source: Vec<String>,
    /// The version being changed (default: the current one, read first)
    #[arg(long)]
    pub version: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum CreateTarget {
    /// Create a tcp target
    Tcp(CreateTcp),
}

#[derive(Debug, Args)]
pub struct CreateTcp {
    #[arg(long)]
    pub scope_id: String,
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    #[arg(long)]
    pub default_port: Option<u16>,
    #[arg(long)]
    pub default_client_port: Option<u16>,
    /// A direct address instead of host sources (no port)
    #[arg(long)]
    pub address: Option<String>,
    #[arg(long)]
    pub session_max_seconds: Option<u32>,
    #[arg(long, allow_negative_numbers = true)]
    pub session_connection_limit: Option<i32>,
    #[arg(long, visible_alias = "worker-filter")]
    pub egress_worker_filter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum HostCatalogs {
    /// Change a name, description (or a host's address); stale versions are refused
    #[command(subcommand)]
    Update(UpdateStatic),
    /// Create a host catalog
    #[command(subcommand)]
    Create(CreateStaticCatalog),
    List {
        #[arg(long)]
        scope_id: String,
    },
    Read {
        #[arg(long)]
        id: String,
    },
    /// Delete a host catalog with its hosts and host sets
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreateStaticCatalog {
    Static {
        #[arg(long)]
        scope_id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum Hosts {
    /// Change a name, description (or a host's address); stale versions are refused
    #[command(subcommand)]
    Update(UpdateStatic),
    /// Create a host
    #[command(subcommand)]
    Create(CreateStaticHost),
    List {
        #[arg(long)]
        host_catalog_id: String,
    },
    Read {
        #[arg(long)]
        id: String,
    },
    /// Delete a host; its sessions are canceled
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreateStaticHost {
    Static {
        #[arg(long)]
        host_catalog_id: String,
        /// Host name or IP address, without a port
        #[arg(long)]
        address: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostSets {
    /// Change a name, description (or a host's address); stale versions are refused
    #[command(subcommand)]
    Update(UpdateStatic),
    /// Create a host set
    #[command(subcommand)]
    Create(CreateStaticSet),
    List {
        #[arg(long)]
        host_catalog_id: String,
    },
    Read {
        #[arg(long)]
        id: String,
    },
    Delete {
        #[arg(long)]
        id: String,
    },
    AddHosts(SetHostsArgs),
    RemoveHosts(SetHostsArgs),
    SetHosts(SetHostsArgs),
}

#[derive(Debug, Subcommand)]
pub enum CreateStaticSet {
    Static {
        #[arg(long)]
        host_catalog_id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthTokens {
    /// List the auth tokens that have not expired
    List {
        #[arg(long, default_value = "global")]
        scope_id: String,
    },
    Read {
        #[arg(long)]
        id: String,
    },
    /// Revoke an auth token; its sessions are canceled
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Everything
    Admin,
    /// Authorize targets; read and cancel only its own sessions
    User,
}

#[derive(Debug, Subcommand)]
pub enum Users {
    Create {
        #[arg(long, default_value = "global")]
        scope_id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, value_enum, default_value_t = Role::User)]
        role: Role,
        /// A project whose targets the user may use (repeat for more; none: every project)
        #[arg(long = "project-id")]
        project_ids: Vec<String>,
    },
    List,
    Read {
        #[arg(long)]
        id: String,
    },
    Update {
        #[arg(long)]
        id: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Replaces the user's projects (repeat for more)
        #[arg(long = "project-id")]
        project_ids: Vec<String>,
        /// Gives the user every project again
        #[arg(long, conflicts_with = "project_ids")]
        all_projects: bool,
    },
    /// Delete a user: its auth tokens are revoked and its sessions canceled
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Let accounts log in as this user
    AddAccounts {
        #[arg(long)]
        id: String,
        /// An account id (repeat for more)
        #[arg(long)]
        account: Vec<String>,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Accounts {
    /// Create an account
    #[command(subcommand)]
    Create(CreateAccount),
    List {
        #[arg(long, default_value = "ampw_1234567890")]
        auth_method_id: String,
    },
    /// Show an account (administrators: any; users: their own)
    Read {
        #[arg(long)]
        id: String,
    },
    /// Delete an account: its auth tokens are revoked and their sessions canceled
    Delete {
        #[arg(long)]
        id: String,
    },
    /// Set an account's password without the current one (administrators)
    SetPassword {
        #[arg(long)]
        id: String,
        /// env://VAR, file://PATH or the password itself (asked for when absent)
        #[arg(long)]
        password: Option<String>,
        /// The version to change (default: the current one, read first)
        #[arg(long)]
        version: Option<u32>,
    },
    /// Change the password of your own account
    ChangePassword {
        #[arg(long)]
        id: String,
        /// env://VAR, file://PATH or the password itself (asked for when absent)
        #[arg(long)]
        current_password: Option<String>,
        /// env://VAR, file://PATH or the password itself (asked for when absent)
        #[arg(long)]
        new_password: Option<String>,
        /// The version to change (default: the current one, read first)
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreateAccount {
    Password {
        #[arg(long, default_value = "ampw_1234567890")]
        auth_method_id: String,
        #[arg(long)]
        login_name: String,
        /// env://VAR, file://PATH or the password itself
        #[arg(long)]
        password: String,
        /// Associate the account with this user at once
        #[arg(long)]
        user_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UpdateStatic {
    Static(UpdateStaticArgs),
}

#[derive(Debug, Args)]
pub struct UpdateStaticArgs {
    #[arg(long)]
    pub id: String,
    /// The version being changed (default: the current one, read first)
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Hosts only: the new address, without a port
    #[arg(long)]
    pub address: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetHostsArgs {
    #[arg(long)]
    pub id: String,
    /// A host id (repeat for more)
    #[arg(long)]
    pub host: Vec<String>,
    #[arg(long)]
    pub version: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum UpdateTarget {
    /// Change a tcp target
    Tcp(UpdateTcp),
}

#[derive(Debug, Args)]
pub struct UpdateTcp {
    #[arg(long)]
    pub id: String,
    /// The version being changed (default: the current one, read first)
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub default_port: Option<u16>,
    #[arg(long)]
    pub default_client_port: Option<u16>,
    #[arg(long)]
    pub session_max_seconds: Option<u32>,
    #[arg(long, allow_negative_numbers = true)]
    pub session_connection_limit: Option<i32>,
    /// Boolean expression over worker name and tags, e.g. `"prod" in "/tags/env"`; "" clears it
    #[arg(long, visible_alias = "worker-filter")]
    pub egress_worker_filter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Sessions {
    /// List the sessions of a project
    List {
        #[arg(long)]
        scope_id: String,
        #[arg(long)]
        include_terminated: bool,
    },
    /// Read a session
    Read {
        #[arg(long)]
        id: String,
    },
    /// Cancel a session
    Cancel {
        #[arg(long)]
        id: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum TransportArg {
    /// QUIC: one connection per session, a stream per proxied connection
    #[default]
    Quic,
    /// TLS 1.3 over TCP, for networks that block UDP
    Tls,
    /// Plaintext TCP, only where the worker allows it
    Tcp,
}

impl From<TransportArg> for sluice_dataplane::client::Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Quic => Self::Quic,
            TransportArg::Tls => Self::Tls,
            TransportArg::Tcp => Self::Tcp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Helper {
    Ssh,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Run a client through the proxy: ssh
    #[arg(value_enum)]
    pub helper: Option<Helper>,
    #[arg(long)]
    pub target_id: Option<String>,
    #[arg(long)]
    pub host_id: Option<String>,
    /// An authorization token from `targets authorize-session`, or - to read it from stdin
    #[arg(long, conflicts_with = "target_id")]
    pub authz_token: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_addr: IpAddr,
    #[arg(long, default_value_t = 0)]
    pub listen_port: u16,
    /// Run this command with {{sluice.ip}}, {{sluice.port}} and {{sluice.addr}} substituted
    #[arg(long)]
    pub exec: Option<String>,
    /// ssh helper: the remote user name
    #[arg(long)]
    pub username: Option<String>,
    /// How to reach the worker
    #[arg(long, value_enum, default_value_t = TransportArg::Quic)]
    pub transport: TransportArg,
    /// Microseconds to keep polling instead of sleeping after relaying a small transfer, which
    /// cuts the latency `connect` adds to interactive traffic (0: sleep at once; the default is
    /// 0 on a machine with one CPU)
    #[arg(
        long,
        default_value_t = sluice_dataplane::default_busy_poll().as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=crate::worker::MAX_BUSY_POLL_US)
    )]
    pub busy_poll_us: u64,
    /// Arguments passed to the client (after --)
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// An authorization token, or - to read it from stdin
    #[arg(long)]
    pub authz: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_addr: IpAddr,
    #[arg(long, default_value_t = 0)]
    pub listen_port: u16,
    /// How to reach the worker
    #[arg(long, value_enum, default_value_t = TransportArg::Quic)]
    pub transport: TransportArg,
    /// Microseconds to keep polling instead of sleeping after relaying a small transfer
    /// (0: sleep at once; the default is 0 on a machine with one CPU)
    #[arg(
        long,
        default_value_t = sluice_dataplane::default_busy_poll().as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=crate::worker::MAX_BUSY_POLL_US)
    )]
    pub busy_poll_us: u64,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = cli.common;
    match cli.command {
        Command::Dev(a) => crate::dev::run(a).await,
        Command::Server(a) => crate::server::run(a).await,
        Command::Worker(a) => crate::worker::run(a).await,
        Command::Workers(w) => crate::api::workers(&common, w).await,
        Command::HostCatalogs(c) => crate::resources::host_catalogs(&common, c).await,
        Command::Hosts(h) => crate::resources::hosts(&common, h).await,
        Command::HostSets(h) => crate::resources::host_sets(&common, h).await,
        Command::Logout => crate::resources::logout(&common).await,
        Command::AuthTokens(t) => crate::resources::auth_tokens(&common, t).await,
        Command::Users(u) => crate::resources::users(&common, u).await,
        Command::Accounts(a) => crate::resources::accounts(&common, a).await,
        Command::Scopes(s) => crate::resources::scopes(&common, s).await,
        Command::Authenticate(Authenticate::Password(a)) => {
            crate::api::authenticate(&common, a).await
        }
        Command::Targets(t) => crate::api::targets(&common, t).await,
        Command::Sessions(s) => crate::api::sessions(&common, s).await,
        Command::Connect(a) => crate::connect::run(&common, a).await,
        Command::Proxy(p) => {
            crate::connect::run(
                &common,
                ConnectArgs {
                    helper: None,
                    target_id: None,
                    host_id: None,
                    authz_token: Some(p.authz),
                    listen_addr: p.listen_addr,
                    listen_port: p.listen_port,
                    exec: None,
                    username: None,
                    transport: p.transport,
                    busy_poll_us: p.busy_poll_us,
                    args: vec![],
                },
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[&str]) -> Vec<String> {
        normalize(v.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_are_accepted() {
        assert_eq!(
            norm(&[
                "sluice",
                "connect",
                "-target-id",
                "t",
                "-listen-port=5",
                "--format",
                "json",
                "-",
                "-1",
                "-h",
                "--",
                "-o",
                "-foo"
            ]),
            [
                "sluice",
                "connect",
                "--target-id",
                "t",
                "--listen-port=5",
                "--format",
                "json",
                "-",
                "-1",
                "-h",
                "--",
                "-o",
                "-foo"
            ]
        );
    }

    #[test]
    fn a_repeated_flag_takes_the_last_value() {
        let argv = normalize(
            [
                "sluice",
                "dev",
                "-proxy-addr",
                "127.0.0.1:0",
                "-proxy-addr",
                "127.0.0.1:5",
            ]
            .map(OsString::from)
            .to_vec(),
        );
        let Command::Dev(d) = parse(argv).unwrap().command else {
            panic!("dev")
        };
        assert_eq!(d.proxy_addr, "127.0.0.1:5");
    }

    #[test]
    fn the_command_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn the_seed_commands_parse() {
        for line in [
            "sluice connect ssh -target-id ttcp_1234567890 --",
            "sluice sessions list -scope-id p_1234567890",
            "sluice sessions read -id s_h7vBIhH5SZ",
            "sluice sessions cancel -id s_h7vBIhH5SZ",
            "sluice targets authorize-session -id ttcp_1234567890",
            "sluice proxy -authz TOKEN",
            "sluice dev -target-session-connection-limit -1 -api-addr 127.0.0.1:0",
        ] {
            let argv = normalize(line.split(' ').map(OsString::from).collect());
            parse(argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}
