//! The binary: parse the command line, resolve settings, run once or as a daemon, and turn
//! the outcome into the SPEC's exit status. Everything else lives in the library.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Parser;

use repo_deploy::cli::{Cli, Command};
use repo_deploy::config::Settings;
use repo_deploy::exit::Exit;
use repo_deploy::{cmdline, commands, daemon, fleet_commands, logging, progress, publish};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // `publish` needs no remote of its own: on a build machine the target stands in for it.
    if let Some(Command::Publish { target, .. }) = &cli.command
        && cli.remote.is_none()
    {
        cli.remote = Some(target.clone());
    }
    logging::init_with_format(
        cli.verbose,
        cli.log_format == repo_deploy::cli::LogFormat::Json,
    );
    // Not `env::vars()`, which panics on a variable that is not UTF-8 (any program's): such
    // values arrive with U+FFFD, which the configuration refuses in `REPO_DEPLOY_*` variables.
    let env = || {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .collect::<HashMap<String, String>>()
    };
    let exit = match Settings::resolve(&cli, &env()) {
        Err(e) => {
            tracing::error!("{}", logging::mask(&e.to_string()));
            Exit::Usage
        }
        Ok(settings) => {
            let secrets = settings.secrets();
            for secret in &secrets {
                logging::register_secret(secret);
            }
            // Before any thread starts, and after the one `env::args()` (clap's, above).
            if let Err(e) = cmdline::hide(&secrets) {
                tracing::warn!(
                    "cannot hide the credentials given on the command line from ps: {e}"
                );
            }
            match &cli.command {
                Some(Command::CheckConfig) => {
                    print!("{}", logging::mask(&settings.describe()));
                    Exit::Ok
                }
                Some(Command::Status { json }) => {
                    show(commands::status(&settings), *json, commands::render_status)
                }
                Some(Command::Releases { json }) => {
                    show(commands::releases(&settings), *json, |list| {
                        commands::render_releases(list)
                    })
                }
                Some(Command::Rollback { to }) => {
                    let to = to.clone();
                    block_on(async move { commands::rollback(&settings, to.as_deref()).await })
                }
                Some(Command::Publish {
                    source,
                    target,
                    sign,
                    notify,
                }) => block_on(async {
                    publish::run(&settings, source, target, sign.as_deref(), *notify).await
                }),
                Some(Command::Fleet { action }) => {
                    block_on(async { fleet_commands::run(&settings, action).await })
                }
                None => {
                    if settings.once {
                        progress::enable_on_terminal();
                    }
                    run(&cli, settings, env)
                }
            }
        }
    };
    ExitCode::from(exit.code() as u8)
}

fn run(cli: &Cli, settings: Settings, env: impl Fn() -> HashMap<String, String>) -> Exit {
    block_on(daemon::run(settings, || Settings::resolve(cli, &env())))
}

fn block_on(work: impl std::future::Future<Output = Exit>) -> Exit {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(work),
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            Exit::Failed
        }
    }
}

/// Print a command's result as text or JSON.
fn show<T: serde::Serialize>(
    result: anyhow::Result<T>,
    json: bool,
    text: impl Fn(&T) -> String,
) -> Exit {
    match result {
        Ok(view) if json => match serde_json::to_string_pretty(&view) {
            Ok(s) => {
                println!("{}", logging::mask(&s));
                Exit::Ok
            }
            Err(e) => {
                tracing::error!("{e}");
                Exit::Failed
            }
        },
        Ok(view) => {
            print!("{}", logging::mask(&text(&view)));
            Exit::Ok
        }
        Err(e) => {
            tracing::error!("{}", logging::mask(&format!("{e:#}")));
            Exit::Failed
        }
    }
}
