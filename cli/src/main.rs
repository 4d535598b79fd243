//! The `sluice` command: argument parsing and output; the work is in the libraries.
//!
//! Exit codes: 0 success; 1 the operation failed (the message says why); 2 bad usage;
//! `connect -exec`/helpers exit with the client's own code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

mod api;
mod args;
mod connect;
mod dev;
mod output;
mod resources;
mod secrets;
mod server;
mod worker;

fn main() -> ExitCode {
    let argv = args::normalize(std::env::args_os().collect());
    let cli = match args::parse(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    // `connect` drives one QUIC connection: one thread keeps quinn's driver, the streams and
    // the local sockets together, without cross-thread wake-ups (measured: fewer context
    // switches and more throughput than a two-thread runtime). That thread polls for a short
    // window after each small transfer, as worker threads do, instead of sleeping until the
    // answer arrives (docs/tuning.md).
    let (builder, busy_poll) = match &cli.command {
        args::Command::Connect(args::ConnectArgs { busy_poll_us, .. })
        | args::Command::Proxy(args::ProxyArgs { busy_poll_us, .. }) => (
            tokio::runtime::Builder::new_current_thread(),
            std::time::Duration::from_micros(*busy_poll_us),
        ),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            (b, std::time::Duration::ZERO)
        }
    };
    let mut builder = builder;
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sluice_dataplane::with_busy_polling(
        busy_poll,
        args::run(cli),
    )) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
