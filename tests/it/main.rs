//! The integration tests: one binary (as cargo and ripgrep do), a module per concern. Each
//! module runs the real `repo-deploy` binary against real servers on loopback; the harness
//! they share lives in `common` (and `git_support` for git servers).

// Not every test module uses every helper of the harness.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod git_support;

mod activation;
mod archive;
mod bad_config;
mod commands;
mod config;
mod crash;
mod daemon;
mod disk;
mod faults;
mod fleet;
mod fuzz_unpack;
mod git;
mod git_signed;
mod hooks;
mod hooks_edge;
mod hostile;
mod http;
mod incremental;
mod interop;
mod local;
mod lock;
mod packaging;
mod page;
mod progress;
mod publish;
mod recovery;
mod releases;
mod s3;
mod secrets;
mod signals;
mod signed;
mod ssh;
mod telemetry;
