#!/usr/bin/env python3
"""Alternate full deploys of two or more contenders on one bundle; print min and median.

    bench/ab.py [--size medium] [--work DIR] [--data /tmp/bench-data] RUNS NAME=SPEC...

SPEC is either `RD BINARY` (a repo-deploy binary: `-f` from the local ZIP into a fresh deploy
directory, empty hooks), optionally preceded by VAR=value environment settings, or a shell
command where ZIP, TREE and DEST are replaced (DEST is a fresh directory). For example, to
compare a build with the one before a change (docs/BENCHMARKS.md):

    bench/ab.py --work /tmp/bench-fs/work 7 old='RD /tmp/rd-old' new='RD target/release/repo-deploy' \\
        raw='tar -cf - -C TREE . | tar -xf - -C DEST && sync -f DEST'

With `--update 1file` (or `1pct`), each `RD` contender first deploys the bundle untimed, then
the timed run is the update to that variant (a local ZIP replaced by rename), with
`--reuse copy|hardlink|off`:

    bench/ab.py --update 1file --reuse copy 7 old='RD /tmp/rd-old' new='RD target/release/repo-deploy'

Round 0 warms the page cache and is not counted; the order rotates every round; outputs are
deleted between runs, outside the timing. Use a fresh filesystem for WORK (scratch-fs.sh).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="medium")
    ap.add_argument("--work", default="/tmp/bench-fs/work")
    ap.add_argument("--data", default="/tmp/bench-data")
    ap.add_argument("--update", choices=["1file", "1pct"])
    ap.add_argument("--reuse", default="copy", choices=["copy", "hardlink", "off"])
    ap.add_argument("runs", type=int)
    ap.add_argument("contenders", nargs="+")
    a = ap.parse_args()
    zip_path = os.path.join(a.data, f"{a.size}.zip")
    tree = os.path.join(a.data, f"{a.size}.tree")
    os.makedirs(os.path.join(a.work, "hooks"), exist_ok=True)
    cfg = os.path.join(a.work, "empty.cfg")
    with open(cfg, "w") as f:
        f.write(f"reuse = {a.reuse}\n" if a.update else "")
    contenders = []
    for arg in a.contenders:
        name, spec = arg.split("=", 1)
        words, env = spec.split(), {}
        while words and "=" in words[0] and not words[0].startswith("/"):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        contenders.append((name, words, env))
    walls = {name: [] for name, _, _ in contenders}
    for rnd in range(a.runs + 1):
        k = rnd % len(contenders)
        for name, words, env in contenders[k:] + contenders[:k]:
            dest = os.path.join(a.work, f"ab-{rnd}-{name}")
            os.makedirs(dest)
            subprocess.run(["sync", "-f", a.work], check=True)
            if words[0] == "RD":
                remote = zip_path
                if a.update:
                    # The remote is a copy, replaced by rename as an operator would.
                    remote = dest + ".zip"
                    shutil.copyfile(zip_path, remote)
                argv = [words[1], "-c", cfg, "-d", dest, "--pre-hooks", a.work + "/hooks",
                        "--post-hooks", a.work + "/hooks", "-f", "-r", remote]
                if a.update:
                    subprocess.run(argv, env={**os.environ, **env}, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    variant = os.path.join(a.data, f"{a.size}-v2-{a.update}.zip")
                    shutil.copyfile(variant, remote + ".new")
                    os.rename(remote + ".new", remote)
                    subprocess.run(["sync", "-f", a.work], check=True)
            elif a.update:
                sys.exit(f"{name}: --update times repo-deploy contenders (RD) only")
            else:
                script = " ".join(words).replace("ZIP", zip_path).replace("TREE", tree)
                argv = ["bash", "-c", script.replace("DEST", dest)]
            started = time.perf_counter()
            done = subprocess.run(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
            wall = time.perf_counter() - started
            if done.returncode:
                sys.exit(f"{name} failed: {done.stderr.decode(errors='replace')[-2000:]}")
            if rnd:
                walls[name].append(wall)
            subprocess.run(["rm", "-rf", dest, dest + ".zip"], check=True)
    for name, runs in walls.items():
        print(f"{name:12s} min {min(runs):.3f} s  median {statistics.median(runs):.3f} s  "
              f"runs {' '.join(f'{x:.3f}' for x in runs)}")
    with open("/proc/loadavg") as f:
        print("load average:", f.read().split()[0])


if __name__ == "__main__":
    main()
