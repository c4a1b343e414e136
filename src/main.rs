//! The binary: parse the command line, resolve settings, run once or as a daemon, and turn
//! the outcome into the SPEC's exit status. Everything else lives in the library.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;

use repo_deploy::cli::{Cli, Command};
use repo_deploy::config::Settings;
use repo_deploy::exit::Exit;
use repo_deploy::{daemon, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let env = || std::env::vars().collect::<HashMap<String, String>>();
    let exit = match Settings::resolve(&cli, &env()) {
        Err(e) => {
            tracing::error!("{}", logging::mask(&e.to_string()));
            Exit::Usage
        }
        Ok(settings) => {
            for secret in settings.secrets() {
                logging::register_secret(&secret);
            }
            match cli.command {
                Some(Command::CheckConfig) => {
                    print!("{}", logging::mask(&settings.describe()));
                    Exit::Ok
                }
                None => run(&cli, settings, env),
            }
        }
    };
    ExitCode::from(exit.code() as u8)
}

fn run(cli: &Cli, settings: Settings, env: impl Fn() -> HashMap<String, String>) -> Exit {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return Exit::Failed;
        }
    };
    runtime.block_on(daemon::run(settings, || Settings::resolve(cli, &env())))
}
