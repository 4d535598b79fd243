//! `sluice connect`: authorize (or take a token), open the session at its worker, listen
//! locally, and proxy every local connection over its own QUIC stream.

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::json;
use sluice_dataplane::client::{ClientSession, StreamEnd};
use sluice_proto::TerminationReason;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::{Common, ConnectArgs, Format, Helper};
use crate::output;

fn expand(template: &str, ip: &str, port: u16, addr: &str) -> String {
    let mut s = template.to_owned();
    for ns in ["sluice", "boundary"] {
        s = s
            .replace(&format!("{{{{{ns}.ip}}}}"), ip)
            .replace(&format!("{{{{{ns}.port}}}}"), &port.to_string())
            .replace(&format!("{{{{{ns}.addr}}}}"), addr);
    }
    s
}

fn client_command(
    a: &ConnectArgs,
    local: SocketAddr,
    session: &ClientSession,
) -> Option<tokio::process::Command> {
    let ip = local.ip().to_string();
    let port = local.port();
    let addr = local.to_string();
    let mut cmd = if let Some(exec) = &a.exec {
        let mut c = tokio::process::Command::new(expand(exec, &ip, port, &addr));
        c.args(a.args.iter().map(|x| expand(x, &ip, port, &addr)));
        c
    } else {
        match a.helper? {
            Helper::Ssh => {
                let claims = session.claims();
                let alias = if claims.host_id.is_empty() {
                    &claims.target_id
                } else {
                    &claims.host_id
                };
                let mut c = tokio::process::Command::new("ssh");
                c.arg("-p").arg(port.to_string());
                c.arg("-o").arg(format!("HostKeyAlias={alias}"));
                if let Some(u) = &a.username {
                    c.arg("-l").arg(u);
                }
                c.arg(&ip);
                c.args(&a.args);
                c
            }
        }
    };
    cmd.env("SLUICE_PROXIED_IP", &ip)
        .env("SLUICE_PROXIED_PORT", port.to_string())
        .env("SLUICE_PROXIED_ADDR", &addr)
        .env("BOUNDARY_PROXIED_IP", &ip)
        .env("BOUNDARY_PROXIED_PORT", port.to_string())
        .env("BOUNDARY_PROXIED_ADDR", &addr);
    Some(cmd)
}

fn read_token(flag: &str) -> anyhow::Result<String> {
    if flag == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .context("while reading the authorization token from standard input")?;
        return Ok(s.trim().to_owned());
    }
    crate::secrets::resolve(flag, "-authz-token")
}

pub async fn run(common: &Common, a: ConnectArgs) -> anyhow::Result<ExitCode> {
    // Quiet by default (the terminal belongs to the user's client); SLUICE_LOG=debug shows
    // why each connection ended.
    crate::dev::init_logging_or("error");
    let token = match (&a.authz_token, &a.target_id) {
        (Some(t), _) => read_token(t)?,
        (None, Some(target)) => {
            let api = crate::api::Api::authed(common)?;
            let item = api.authorize(target, a.host_id.as_deref()).await?;
            item["authorization_token"]
                .as_str()
                .context("the controller's answer has no authorization token")?
                .to_owned()
        }
        (None, None) => bail!("say what to connect to: -target-id TARGET or -authz-token TOKEN"),
    };
    let session = Arc::new(
        ClientSession::open(&token, a.transport.into())
            .await
            .context("while opening the session at its worker")?,
    );
    let listener =
        sluice_dataplane::net::bind_tcp((a.listen_addr, a.listen_port).into(), false, None)
            .and_then(TcpListener::from_std)
            .with_context(|| format!("while listening on {}:{}", a.listen_addr, a.listen_port))?;
    let local = listener.local_addr()?;
    let claims = session.claims().clone();
    let expiration = jiff::Timestamp::from_second(claims.expires_at as i64)
        .map(|t| output::rfc1123(&json!(t.to_string())))
        .unwrap_or_default();
    let child = client_command(&a, local, &session);
    let has_child = child.is_some();
    let json_mode = common.format == Format::Json;
    let info = if json_mode {
        serde_json::to_string(&json!({
            "address": local.ip().to_string(),
            "port": local.port(),
            "protocol": "tcp",
            "expiration": jiff::Timestamp::from_second(claims.expires_at as i64).ok(),
            "connection_limit": claims.connection_limit,
            "session_id": claims.session_id,
        }))? + "\n"
    } else {
        output::proxy_listening(
            &local.ip().to_string(),
            claims.connection_limit,
            &expiration,
            local.port(),
            &claims.session_id,
        )
    };
    // With a client to run, its output owns stdout; our information goes to stderr.
    if child.is_some() {
        eprint!("{info}");
    } else {
        print!("{info}");
    }
    let show_left = claims.connection_limit >= 0;
    let accept_session = session.clone();
    let accept = async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let session = accept_session.clone();
            tokio::spawn(async move {
                let end = session
                    .proxy(tcp, peer, |left| {
                        if show_left {
                            if json_mode {
                                println!("{}", json!({"connections_left": left}));
                            } else {
                                print!("\nConnection information:\n    Connections Left: {left}\n");
                            }
                        }
                    })
                    .await;
                match end {
                    StreamEnd::Refused(r) => {
                        eprintln!("Error: the worker refused the connection: {r}")
                    }
                    StreamEnd::Failed(e) => tracing::debug!(error = %e, "connection failed"),
                    StreamEnd::Done(..) => {}
                }
            });
            // The new connection's task runs first, up to sending its first bytes; the next
            // `accept`, which finds nothing in the common case, comes after it.
            tokio::task::yield_now().await;
        }
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    crate::dev::report_on_sigusr1()?;
    let termination = |msg: &str| {
        if json_mode {
            println!("{}", json!({"termination_reason": msg}));
        } else if !has_child {
            print!("\nTermination information:\n    Reason: {msg}\n");
        } else {
            eprint!("\nTermination information:\n    Reason: {msg}\n");
        }
    };
    if let Some(mut cmd) = child {
        let mut proc = cmd
            .spawn()
            .with_context(|| format!("while starting {:?}", cmd.as_std().get_program()))?;
        tokio::select! {
            status = proc.wait() => {
                session.close().await;
                let code = status.ok().and_then(|s| s.code()).unwrap_or(1);
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            reason = session.ended() => {
                let _ = proc.kill().await;
                termination(reason.client_message());
                return Ok(ExitCode::FAILURE);
            }
            _ = accept => unreachable!("the accept loop runs until the process ends"),
        }
    }
    tokio::select! {
        reason = session.ended() => {
            termination(reason.client_message());
            Ok(if matches!(reason, TerminationReason::NetworkError | TerminationReason::SystemError) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        _ = sigint.recv() => {
            session.close().await;
            termination("Received shutdown signal");
            Ok(ExitCode::SUCCESS)
        }
        _ = sigterm.recv() => {
            session.close().await;
            termination("Received shutdown signal");
            Ok(ExitCode::SUCCESS)
        }
        _ = accept => unreachable!("the accept loop runs until the process ends"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn templates_expand_in_both_namespaces() {
        assert_eq!(
            super::expand(
                "{{sluice.ip}}:{{boundary.port}} {{sluice.addr}}",
                "127.0.0.1",
                5,
                "127.0.0.1:5"
            ),
            "127.0.0.1:5 127.0.0.1:5"
        );
    }
}
