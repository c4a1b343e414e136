#!/usr/bin/env bash
# The crash soak of issue #5: 2,000 SIGKILLs of `repo-deploy -f` at random moments of an
# update (start, download, unpack, durability, pre-update hook, switch, post-update hook,
# retention). After each kill `current` must name a complete release (every file compared
# with its archive) and the next run must remove every leftover and converge. Run by hand,
# not in CI; it drives the ignored test `crash_soak` of tests/it/crash.rs.
#
#   bench/crash-soak.sh [--kills N] [--seed S] [--release] [--on-disk]
#
#   --kills N    how many kills (default 2000; about 5 a second with a debug build)
#   --seed S     the RNG seed of the kill moments (default 0x5eedc0de; printed at the end)
#   --release    test a release build (builds every dependency in release mode first)
#   --on-disk    keep the deploy directory on the disk even as root (default: a tmpfs when
#                root, so that fsync and syncfs on a busy disk do not eat the time budget)
#
# The summary at the end (kills by phase and by remote, leftovers found and removed) is what
# docs/RELIABILITY.md records.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=()
kills=2000
while (($#)); do
  case "$1" in
    --kills) kills=${2:?--kills needs a number}; shift ;;
    --seed) export CRASH_SEED=${2:?--seed needs a value}; shift ;;
    --release) profile=(--release) ;;
    --on-disk) export CRASH_ON_DISK=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "crash-soak: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
export CRASH_KILLS=$kills

started=$(date +%s)
cargo test "${profile[@]}" --test it -- --ignored --exact crash::crash_soak --nocapture
echo "crash-soak: $kills kills passed in $(( $(date +%s) - started ))s (build included)"
