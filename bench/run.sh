#!/usr/bin/env bash
# bench/run.sh [small|medium|large|all ...] - repo-deploy against its peers, in one run.
#
#   bench/run.sh              # medium (10k files, 300 MiB): the goals' bundle
#   bench/run.sh small medium # several sizes, then the growth table
#   bench/run.sh all          # small, medium and large (100k files, 1 GiB: slow)
#
# What it does, in order:
#  1. generates the bundles it lacks with make-bundle.py into $BENCH_DATA (default
#     /tmp/bench-data, outside the repository; never commit them);
#  2. builds the release binary;
#  3. as root, mounts a fresh ext4 on a loop device (scratch-fs.sh) for every extraction
#     target; otherwise uses a temporary directory and says so (numbers are then noisier);
#  4. runs bench/bench.py: full deploy against `unzip -q`, `bsdtar -xf`, Python's zipfile and
#     the raw file-creation limit (`tar | tar`), alternately, each into a fresh directory and
#     followed by `sync -f` (one filesystem, the guarantee repo-deploy's syncfs gives); peak
#     RSS; incremental updates (one-file and 1% variants) locally and over HTTP from a local
#     nginx, per `reuse` mode, with the bytes nginx sent; 1,000 unchanged checks of a running
#     daemon (CPU and RSS) for an HTTP, a local and (with moto_server) an S3 remote; the
#     switch time. It prints tables of medians and ratios and writes
#     them as JSON to $BENCH_RESULTS (default /tmp/bench-results).
#
# Environment: RUNS (timed rounds per measurement, default 5; 3 for large), CHECKS (unchanged
# checks, default 1000), BENCH_FS=xfs (the scratch filesystem is XFS, whose reflinks make
# `reuse = copy` share blocks; default ext4), BENCH_WORK (use this directory instead of a scratch filesystem),
# BENCH_SHARED (where make-bundle.py and scratch-fs.sh live, default ../shared/bench),
# BENCH_ONLY (comma-separated sections: full,incremental,http,daemon).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${BENCH_SHARED:-$repo/../shared/bench}
data=${BENCH_DATA:-/tmp/bench-data}
results=${BENCH_RESULTS:-/tmp/bench-results}

sizes=()
for arg in "${@:-medium}"; do
  case $arg in
    small|medium|large) sizes+=("$arg") ;;
    all) sizes+=(small medium large) ;;
    *) echo "usage: $0 [small|medium|large|all ...]" >&2; exit 2 ;;
  esac
done

if [[ ! -x /usr/bin/time ]]; then
  echo "bench: installing GNU time (peak RSS)" >&2
  apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y time >/dev/null 2>&1; } \
    || { echo "bench: /usr/bin/time is missing: apt-get install time" >&2; exit 1; }
fi
for tool in unzip bsdtar nginx python3 tar; do
  command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null || {
    echo "bench: $tool is missing (apt-get install unzip libarchive-tools nginx-light python3)" >&2
    exit 1
  }
done

# 1. Bundles.
mkdir -p "$data"
for size in "${sizes[@]}"; do
  if [[ ! -f $data/$size-v2-1pct.zip || ! -d $data/$size.tree || ! -f $data/$size.manifest.json ]]; then
    [[ -f $shared/make-bundle.py ]] || { echo "bench: $shared/make-bundle.py not found (set BENCH_SHARED)" >&2; exit 1; }
    echo "bench: generating the $size bundle into $data (once)" >&2
    python3 "$shared/make-bundle.py" --preset "$size" --out "$data" >&2
  fi
done

# 2. The release binary.
echo "bench: building the release binary" >&2
(cd "$repo" && cargo build --release --quiet)
bin=${CARGO_TARGET_DIR:-$repo/target}/release/repo-deploy
[[ -x $bin ]] || { echo "bench: $bin was not built" >&2; exit 1; }

# 3. Where extractions go.
fs_note=""
cleanup() { :; }
if [[ -n ${BENCH_WORK:-} ]]; then
  work=$BENCH_WORK
  mkdir -p "$work"
  fs_note="BENCH_WORK=$work ($(findmnt -no FSTYPE,OPTIONS -T "$work" | tr -s ' '))"
elif [[ $(id -u) == 0 && ${BENCH_FS:-ext4} == xfs ]]; then
  command -v mkfs.xfs >/dev/null || apt-get install -y xfsprogs >/dev/null 2>&1 \
    || { echo "bench: mkfs.xfs is missing: apt-get install xfsprogs" >&2; exit 1; }
  mnt=/tmp/bench-xfs
  img=$mnt.img
  mkdir -p "$mnt"
  rm -f "$img"; truncate -s 16G "$img"
  mkfs.xfs -q -f -m reflink=1 "$img"
  dev=$(losetup -f --show --direct-io=on "$img")
  mount "$dev" "$mnt"
  mkdir -p "$mnt/work"
  work=$mnt/work
  cleanup() { cd /; umount "$mnt" || true; losetup -d "$dev" 2>/dev/null || true; rm -f "$img"; rmdir "$mnt" 2>/dev/null || true; }
  fs_note="fresh XFS (reflink=1) on a loop device, mounted at $mnt"
elif [[ $(id -u) == 0 && -x $shared/scratch-fs.sh ]]; then
  mnt=/tmp/bench-fs
  if mountpoint -q "$mnt"; then
    echo "bench: $mnt is already mounted: using it as it is, and leaving it mounted" >&2
  else
    "$shared/scratch-fs.sh" up "$mnt" >&2
    cleanup() { cd /; "$shared/scratch-fs.sh" down "$mnt" >&2 || true; }
  fi
  work=$mnt/work
  mkdir -p "$work"
  fs_note="fresh ext4 on a loop device (scratch-fs.sh), mounted at $mnt"
else
  work=$(mktemp -d /tmp/bench-work.XXXXXX)
  cleanup() { rm -rf "$work"; }
  fs_note="temporary directory $work on the shared disk (not root or no scratch-fs.sh): expect noisier numbers"
  echo "bench: WARNING: $fs_note" >&2
fi
trap cleanup EXIT

# 4. Measure.
mkdir -p "$results"
python3 "$repo/bench/bench.py" --bin "$bin" --data "$data" --work "$work" --results "$results" \
  --fs-note "$fs_note" "${sizes[@]}"
