//! repo-deploy: a pull-based deployment agent.
//!
//! The binary (`main.rs`) is a thin shell around this library so that integration tests and
//! benchmarks run the same code. Data flows one way: `cli` → `config` (resolved `Settings`) →
//! `daemon` / `cycle`, which drive the modules below them. See docs/ARCHITECTURE.md.

pub mod activate;
pub mod cli;
pub mod cmdline;
pub mod commands;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod decide;
pub mod events;
pub mod exit;
pub mod fsutil;
pub mod handover;
pub mod hooks;
pub mod incremental;
pub mod lock;
pub mod logging;
pub mod progress;
pub mod releases;
pub mod remote;
pub mod schedule;
pub mod secret;
pub mod source;
pub mod state;
pub mod systemd;
pub mod telemetry;
pub mod unpack;
