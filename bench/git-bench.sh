#!/usr/bin/env bash
# git-bench.sh [small|medium|large] [RUNS] - repo-deploy's git remote against its peer, over
# git:// from a local `git daemon` on loopback. Not a test: it prints the figures recorded in
# docs/BENCHMARKS.md.
#
#   cargo build --release && bench/git-bench.sh small 5
#
# 1. Full deploy of a sub-directory: `repo-deploy -f -r git://…/app.git/site` into a fresh deploy
#    directory (cold cache) against `git clone --depth 1` of the same repository plus `cp -a`
#    of `site/`, run alternately, medians and their ratio.
# 2. Unchanged check: `repo-deploy -f` when nothing moved, against `git fetch --depth 1` in an
#    up-to-date clone (what a pull-from-cron deploy does): wall time, bytes on the wire and
#    request/response round trips per TCP connection, counted by a small proxy in front of the
#    daemon (the proxy is only used for these counts and the unchanged timings).
#
# The repository holds make-bundle.py's tree under site/ (the part deployed) and a few files
# under docs/. Everything is written under BENCH_WORK (default /tmp/git-bench, outside the
# project); the tree is reused from BENCH_DATA (default /tmp/bench-data) or generated there.
# On these machines the shared disk's timings depend on its recent history: for stable numbers
# put BENCH_WORK on a fresh filesystem (see /work/shared/bench/README.md, scratch-fs.sh).
set -euo pipefail

PRESET=${1:-small}
RUNS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/repo-deploy}
DATA=${BENCH_DATA:-/tmp/bench-data}
WORK=${BENCH_WORK:-/tmp/git-bench}
MAKE_BUNDLE=${MAKE_BUNDLE:-/work/shared/bench/make-bundle.py}

[[ -x $BIN ]] || { echo "build first: cargo build --release (or set BIN)" >&2; exit 2; }
case $WORK in "$ROOT"|"$ROOT"/*) echo "BENCH_WORK must be outside the project" >&2; exit 2 ;; esac

# An isolated git: no user or system configuration.
export HOME=$WORK/home GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
unset "${!REPO_DEPLOY_@}" 2>/dev/null || true

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

# --- data and repository -------------------------------------------------------------------
if [[ ! -d $DATA/$PRESET.tree ]]; then
  echo "generating the $PRESET tree in $DATA"
  python3 "$MAKE_BUNDLE" --preset "$PRESET" --out "$DATA" --no-variants >/dev/null
fi
rm -rf "$WORK"
mkdir -p "$WORK/home" "$WORK/srv" "$WORK/none" "$WORK/runs"
: >"$WORK/empty.cfg"
git init -q -b main "$WORK/src"
cp -a "$DATA/$PRESET.tree" "$WORK/src/site"
mkdir -p "$WORK/src/docs"
for i in $(seq 20); do printf 'doc %s\n' "$i" >"$WORK/src/docs/doc$i.md"; done
git -C "$WORK/src" add -A
git -C "$WORK/src" commit -q -m v1
git clone -q --bare "$WORK/src" "$WORK/srv/app.git"
files=$(git -C "$WORK/srv/app.git" ls-tree -r HEAD:site | wc -l)
size=$(du -sh --apparent-size "$WORK/src/site" | cut -f1)
pack=$(du -sh "$WORK/srv/app.git/objects" | cut -f1)

# --- servers -------------------------------------------------------------------------------
DPORT=$(free_port)
git daemon --export-all --base-path="$WORK/srv" --listen=127.0.0.1 --port="$DPORT" --reuseaddr \
  "$WORK/srv" 2>"$WORK/daemon.log" &
pids+=($!)
wait_port "$DPORT"

cat >"$WORK/tcp-count.py" <<'PY'
# A TCP proxy that logs, per connection, the bytes each way and the request/response round
# trips (client->server data followed by server->client data counts one).
import asyncio, json, sys
listen, target, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
active = 0
def set_active(delta):
    global active
    active += delta
    with open(log + ".active", "w") as f:
        f.write(str(active))
async def handle(cr, cw):
    set_active(1)
    sr, sw = await asyncio.open_connection("127.0.0.1", target)
    st = {"up": 0, "down": 0, "round_trips": 0, "last": None}
    async def pump(r, w, d):
        try:
            while data := await r.read(65536):
                st[d] += len(data)
                if d == "down" and st["last"] == "up":
                    st["round_trips"] += 1
                st["last"] = d
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            try:
                w.write_eof()
            except (OSError, RuntimeError):
                pass
    await asyncio.gather(pump(cr, sw, "up"), pump(sr, cw, "down"))
    cw.close(); sw.close()
    with open(log, "a") as f:
        f.write(json.dumps({k: st[k] for k in ("up", "down", "round_trips")}) + "\n")
    set_active(-1)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
PPORT=$(free_port)
python3 "$WORK/tcp-count.py" "$PPORT" "$DPORT" "$WORK/wire.log" &
pids+=($!)
wait_port "$PPORT"
# The proxy's own probe connection above is logged; start counting from here.
count_from() { wc -l <"$WORK/wire.log" 2>/dev/null || echo 0; }
wire_since() { # total up, down, connections, round trips of connections logged after line $1
  # Wait until the proxy has logged every connection (the client may exit first).
  for _ in $(seq 100); do [[ $(cat "$WORK/wire.log.active") == 0 ]] && break; sleep 0.05; done
  tail -n +"$(($1 + 1))" "$WORK/wire.log" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
print(sum(r["up"] for r in rows), sum(r["down"] for r in rows), len(rows), sum(r["round_trips"] for r in rows))'
}

deploy() { # deploy-dir remote
  "$BIN" -f -c "$WORK/empty.cfg" -d "$1" --pre-hooks "$WORK/none" --post-hooks "$WORK/none" -r "$2" 2>>"$WORK/deploy.log"
}
REMOTE=git://127.0.0.1:$DPORT/app.git/site
PROXIED=git://127.0.0.1:$PPORT/app.git/site

echo "repo-deploy $("$BIN" --version | awk '{print $2}'), $(git --version), $(nproc) CPUs"
echo "repository: $PRESET tree under site/ ($files files, $size), 20 files under docs/; bare repository objects $pack"
echo

# --- 1. full deploy against clone + copy ---------------------------------------------------
# Warm-up: the served repository's pack in the page cache, binaries loaded.
deploy "$WORK/warm-d" "$REMOTE"
git clone -q --depth 1 "git://127.0.0.1:$DPORT/app.git" "$WORK/warm-c"
rm -rf "$WORK/warm-d" "$WORK/warm-c"
ours=() peer=()
for i in $(seq "$RUNS"); do
  sync
  t0=$(now); deploy "$WORK/runs/d$i" "$REMOTE"; t1=$(now)
  ours+=("$(elapsed "$t0" "$t1")")
  sync
  t0=$(now)
  git clone -q --depth 1 "git://127.0.0.1:$DPORT/app.git" "$WORK/runs/c$i"
  cp -a "$WORK/runs/c$i/site" "$WORK/runs/copy$i"
  t1=$(now)
  peer+=("$(elapsed "$t0" "$t1")")
done
m_ours=$(echo "${ours[*]}" | median)
m_peer=$(echo "${peer[*]}" | median)
echo "full deploy of /site, cold cache (s):           repo-deploy ${ours[*]} -> median $m_ours"
echo "git clone --depth 1 + cp -a site/ (s):          ${peer[*]} -> median $m_peer"
echo "ratio repo-deploy / clone+copy:                 $(python3 -c "print(f'{$m_ours / $m_peer:.2f}')")"
echo "  of which repo-deploy's checkout + validation + syncfs (s): $(grep -o 'bytes into .* in [0-9.]*s' "$WORK/deploy.log" | tail -n "$RUNS" | awk '{print $NF}' | tr -d s | tr '\n' ' ')"
diff -r "$WORK/runs/copy1" "$WORK/runs/d1/current/" >/dev/null && echo "release == clone's site/ (diff -r): yes" || echo "release == clone's site/ (diff -r): NO"
echo

# --- 2. an unchanged check -----------------------------------------------------------------
n=$(count_from); deploy "$WORK/p" "$PROXIED"
read -r up down conns rts < <(wire_since "$n")
echo "full deploy through the proxy: $conns connections, $rts round trips, $up bytes up, $down bytes down"
n=$(count_from)
git clone -q --depth 1 "git://127.0.0.1:$PPORT/app.git" "$WORK/pc"
read -r up down conns rts < <(wire_since "$n")
echo "git clone --depth 1 through the proxy: $conns connections, $rts round trips, $up bytes up, $down bytes down"
echo

times=()
n=$(count_from)
for i in $(seq "$RUNS"); do
  t0=$(now); deploy "$WORK/p" "$PROXIED"; t1=$(now)
  times+=("$(elapsed "$t0" "$t1")")
done
read -r up down conns rts < <(wire_since "$n")
grep -c "unchanged" "$WORK/deploy.log" >/dev/null || { echo "the checks did not report unchanged" >&2; exit 1; }
echo "unchanged check, repo-deploy -f (s):            ${times[*]} -> median $(echo "${times[*]}" | median)"
echo "  per check: $((conns / RUNS)) connection(s), $((rts / RUNS)) round trip(s), $((up / RUNS)) bytes up, $((down / RUNS)) bytes down"

times=()
n=$(count_from)
for i in $(seq "$RUNS"); do
  t0=$(now); git -C "$WORK/pc" fetch -q --depth 1 origin; t1=$(now)
  times+=("$(elapsed "$t0" "$t1")")
done
read -r up down conns rts < <(wire_since "$n")
echo "peer: git fetch --depth 1 in an up-to-date clone (s): ${times[*]} -> median $(echo "${times[*]}" | median)"
echo "  per fetch: $((conns / RUNS)) connection(s), $((rts / RUNS)) round trip(s), $((up / RUNS)) bytes up, $((down / RUNS)) bytes down"

for v in 0 2; do
  n=$(count_from)
  git -c protocol.version=$v ls-remote "git://127.0.0.1:$PPORT/app.git" HEAD >/dev/null
  read -r up down conns rts < <(wire_since "$n")
  echo "git ls-remote HEAD with protocol v$v: $conns connection(s), $rts round trip(s), $up bytes up, $down bytes down"
done

# --- 3. the unchanged check over smart HTTP (nginx + fcgiwrap + git http-backend) ------------
if [[ -x /usr/sbin/nginx && -x /usr/sbin/fcgiwrap ]]; then
  H=$WORK/http; mkdir -p "$H/tmp"
  /usr/sbin/fcgiwrap -s "unix:$H/fcgi.sock" 2>"$H/fcgiwrap.log" &
  pids+=($!)
  for _ in $(seq 200); do [[ -S $H/fcgi.sock ]] && break; sleep 0.05; done
  HPORT=$(free_port)
  cat >"$H/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $H/nginx.pid; error_log $H/error.log;
events { worker_connections 64; }
http {
  log_format wire '\$request_method \$uri \$status \$request_length \$bytes_sent';
  access_log $H/access.log wire;
  client_body_temp_path $H/tmp/body; fastcgi_temp_path $H/tmp/fastcgi; proxy_temp_path $H/tmp/proxy;
  uwsgi_temp_path $H/tmp/uwsgi; scgi_temp_path $H/tmp/scgi; client_max_body_size 0;
  server {
    listen 127.0.0.1:$HPORT;
    location / {
      fastcgi_pass unix:$H/fcgi.sock;
      fastcgi_param SCRIPT_FILENAME $(git --exec-path)/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT $WORK/srv;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO \$uri;
      fastcgi_param QUERY_STRING \$args;
      fastcgi_param REQUEST_METHOD \$request_method;
      fastcgi_param CONTENT_TYPE \$content_type;
      fastcgi_param CONTENT_LENGTH \$content_length;
    }
  }
}
CONF
  /usr/sbin/nginx -p "$H" -c "$H/nginx.conf" &
  pids+=($!)
  wait_port "$HPORT"
  deploy "$WORK/h" "http://127.0.0.1:$HPORT/app.git/site"
  before=$(wc -l <"$H/access.log")
  times=()
  for i in $(seq "$RUNS"); do
    t0=$(now); deploy "$WORK/h" "http://127.0.0.1:$HPORT/app.git/site"; t1=$(now)
    times+=("$(elapsed "$t0" "$t1")")
  done
  tail -n +"$((before + 1))" "$H/access.log" | awk -v runs="$RUNS" -v t="${times[*]}" '
    { n++; up += $4; down += $5; reqs[$1 " " $2]++ }
    END { printf "unchanged check over smart HTTP (s): %s\n  per check: %d request(s) (", t, n / runs;
          for (r in reqs) printf "%s ", r; printf "), %d bytes up, %d bytes down (HTTP headers included)\n", up / runs, down / runs }'
  echo "  (median $(echo "${times[*]}" | median) s)"
fi

rm -rf "$WORK/runs" "$WORK/p" "$WORK/pc" "$WORK/h"
