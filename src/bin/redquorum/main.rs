//! `redquorum`: a distributed flock(1) for cron jobs, on N independent Redis masters.
//!
//! Built with the `cli` feature: `cargo install redquorum --features cli`. See
//! `redquorum --help` and docs/cli.md.

mod check;
mod cli;
mod demo;
mod doctor;
mod exit;
mod job;
mod probe;
mod run;
mod signals;
mod status;
mod tls;
mod watchdog;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout and succeed; every other parse error is a
            // usage error (clap's own status would be 2).
            let _ = e.print();
            return code(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    // `run`'s watchdog is forked now, while the process has a single thread.
    let watchdog = match &cli.command {
        Command::Run(_) => match run::prepare() {
            Ok(watchdog) => Some(watchdog),
            Err(failure) => {
                eprintln!("redquorum: {failure}");
                return code(failure.code);
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redquorum: cannot start the async runtime: {e}");
            return code(exit::SOFTWARE);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => match watchdog {
                Some(watchdog) => run::run(args, watchdog).await,
                None => Err(exit::Failure::new(exit::SOFTWARE, "no watchdog for `run`")),
            },
            Command::Status(args) => status::status(args).await,
            Command::Demo(args) => demo::demo(args).await,
            Command::Doctor(args) => doctor::doctor(args).await,
        }
    });
    // Spawned clean-ups (background releases) get no more time: everything that matters was
    // awaited.
    drop(runtime);
    let _ = std::io::stdout().flush();
    match outcome {
        Ok(status) => code(status),
        Err(failure) => {
            eprintln!("redquorum: {failure}");
            code(failure.code)
        }
    }
}

fn code(status: i32) -> ExitCode {
    // Exit statuses are 0..=255 on Unix; anything else would be truncated by the OS anyway.
    ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX))
}
