//! repo-deploy: a pull-based deployment agent.
//!
//! The binary (`main.rs`) is a thin shell around this library so that integration tests and
//! benchmarks run the same code. Data flows one way: `cli` → `config` (resolved `Settings`) →
//! `daemon` / `cycle`, which drive the modules below them. See docs/ARCHITECTURE.md.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

// The library's API, chosen as ripgrep's crates choose theirs: what the binary (`main.rs`), the
// integration tests, the man-page generator and the fuzz target use. Everything else is private
// to the crate, so a module's `pub` means "for its callers here", and the compiler finds what
// nothing calls.
pub mod cli;
pub mod cmdline;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod exit;
pub mod fleet_commands;
pub mod logging;
pub mod progress;
pub mod publish;
pub mod remote;
pub mod source;
pub mod unpack;

mod activate;
mod cycle;
mod decide;
mod events;
mod fleet;
mod fsutil;
mod handover;
mod hooks;
mod incremental;
mod lock;
mod page;
mod releases;
mod rollout;
mod schedule;
mod secret;
mod state;
mod systemd;
mod telemetry;
mod trust;
