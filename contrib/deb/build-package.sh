#!/usr/bin/env bash
# Build the Debian package: generate the man pages and shell completions from the CLI
# definition (examples/gen-assets.rs, into target/assets), then `cargo deb`, which builds the
# release binary and packages everything [package.metadata.deb] in Cargo.toml lists.
# Extra arguments go to `cargo deb` (e.g. --fast). Prints the paths of the .deb and of the
# -dbgsym.ddeb (the debug symbols) last.
# Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-package.sh: cargo-deb is missing: cargo install cargo-deb --locked" >&2
  exit 1
fi
cargo run --quiet --locked --example gen-assets >/dev/null
cargo deb --locked "$@"
