//! `repo-deploy fleet status|halt|resume|notify|forget`: the operator's view of the group
//! and the few actions on it (SPEC § Fleet rollouts, rule 6). Each command joins etcd with a
//! lease of its own, publishes no presence, does its one thing and leaves.
//!
//! `fleet status` exits 1 when a version is halted or a host is gone, so that a monitoring
//! check can run it as it is.

use std::fmt::Write as _;

use crate::cli::FleetAction;
use crate::config::Settings;
use crate::exit::Exit;
use crate::fleet::{Fleet, FleetError, FleetOptions, FleetStatus};

/// Run one `fleet` command.
pub async fn run(settings: &Settings, action: &FleetAction) -> Exit {
    let Some(fleet_settings) = &settings.fleet else {
        tracing::error!(
            "fleet commands need fleet mode: set `etcd` (the endpoints) and `fleet` (the group's name) in the configuration"
        );
        return Exit::Usage;
    };
    // A command's lease only has to outlive the command.
    let options = FleetOptions {
        lease_secs: 10,
        ..fleet_settings.options.clone()
    };
    let fleet = match Fleet::connect(&options).await {
        Ok(f) => f,
        Err(e) => return failed(&e),
    };
    let exit = match act(&fleet, action).await {
        Ok(exit) => exit,
        Err(e) => failed(&e),
    };
    if let Err(e) = fleet.close().await {
        tracing::debug!("cannot revoke the command's lease (it expires on its own): {e}");
    }
    exit
}

async fn act(fleet: &Fleet, action: &FleetAction) -> Result<Exit, FleetError> {
    match action {
        FleetAction::Status { json } => {
            let status = fleet.status().await?;
            if *json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => println!("{}", crate::logging::mask(&text)),
                    Err(e) => {
                        tracing::error!("cannot print the status: {e}");
                        return Ok(Exit::Failed);
                    }
                }
            } else {
                print!("{}", crate::logging::mask(&render(&status)));
            }
            Ok(if status.halted.is_empty() && status.gone.is_empty() {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        FleetAction::Halt { version, reason } => {
            if fleet.halt(version, reason).await? {
                println!(
                    "halted {version}: no host starts it until `repo-deploy fleet resume {version}`"
                );
            } else {
                println!("{version} was already halted (the first halt's reason stays)");
            }
            Ok(Exit::Ok)
        }
        FleetAction::Resume { version } => {
            if fleet.resume(version).await? {
                println!("resumed {version}: hosts take it at their next check");
            } else {
                println!("{version} was not halted");
            }
            Ok(Exit::Ok)
        }
        FleetAction::Notify => {
            fleet.notify().await?;
            println!(
                "notified fleet {}: every daemon checks now",
                status_name(fleet)
            );
            Ok(Exit::Ok)
        }
        FleetAction::Forget { host } => {
            if fleet.forget(host).await? {
                println!("forgot {host}");
            } else {
                println!("{host} was not known");
            }
            Ok(Exit::Ok)
        }
    }
}

fn status_name(fleet: &Fleet) -> String {
    fleet.name().to_owned()
}

/// Configuration errors are the operator's to fix (exit 2); the rest failed the command.
fn failed(e: &FleetError) -> Exit {
    tracing::error!("{}", crate::logging::mask(&e.to_string()));
    match e {
        FleetError::Config(_) | FleetError::Auth { .. } => Exit::Usage,
        _ => Exit::Failed,
    }
}

/// `fleet status` as text: problems first (halts, hosts gone), then every host.
pub fn render(status: &FleetStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet {}: {} live host(s)",
        status.fleet,
        status.hosts.len()
    );
    for halt in &status.halted {
        let _ = writeln!(
            out,
            "HALTED {} by {} at {}: {}",
            halt.version, halt.host, halt.time, halt.reason
        );
    }
    for host in &status.gone {
        let _ = writeln!(
            out,
            "GONE   {host} (its lease expired; `fleet forget {host}` if it is gone for good)"
        );
    }
    if !status.updating.is_empty() {
        let _ = writeln!(out, "updating: {}", status.updating.join(", "));
    }
    let width = status
        .hosts
        .iter()
        .map(|h| h.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:9}  {:12}  {:25}  VERSION",
        "HOST", "PHASE", "LAST RESULT", "LAST CHECK"
    );
    for h in &status.hosts {
        let _ = writeln!(
            out,
            "{:width$}  {:9}  {:12}  {:25}  {}",
            h.host,
            h.phase,
            h.last_result.as_deref().unwrap_or("-"),
            h.last_check.as_deref().unwrap_or("-"),
            h.version.as_deref().unwrap_or("-"),
        );
    }
    out
}
