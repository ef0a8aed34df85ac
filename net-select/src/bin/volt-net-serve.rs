//! `volt-net-serve`: a vhost-user-net daemon over a TAP, a macvtap or a loopback.
//!
//! ```text
//! volt-net-serve --socket /run/vm0.sock --backend tap --iface vm0tap --queues 2
//! ```
//! The same as `volt-net serve` (see `net_select::serve`), for VMM set-ups that want the
//! daemon without the rest of the command line.

use std::process::ExitCode;

use clap::Parser;
use net_select::serve::{run, ServeArgs};

/// Serve a volt-net backend to a vhost-user frontend.
#[derive(Parser, Debug)]
#[command(name = "volt-net-serve", version, about)]
struct Cli {
    #[command(flatten)]
    args: ServeArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    run(&Cli::parse().args)
}
