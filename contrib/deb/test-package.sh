#!/usr/bin/env bash
# Build the Debian package, install it with dpkg -i, check what it installed, then remove and
# purge it. Needs root and cargo-deb; run by .ci/run after cargo test. Leaves the system as it
# found it, and refuses to run where repo-deploy is already installed as a package.
set -euo pipefail
cd "$(dirname "$0")/../.."

pkg=repo-deploy
fail() { echo "test-package.sh: FAIL: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "needs root (dpkg -i)"
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv "not-installed"; then
  fail "package $pkg is already on this machine; remove it first (dpkg -P $pkg)"
fi
# The checks below must see the shipped configuration, not this environment's.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep '^REPO_DEPLOY_' || true)

echo "--- build the package"
started=$SECONDS
deb=$(contrib/deb/build-package.sh --fast | grep '\.deb$' | tail -n 1)
[[ -f $deb ]] || fail "cargo deb did not print a .deb path (got '$deb')"
echo "built $deb in $((SECONDS - started))s"

echo "--- dpkg -i"
cleanup() { dpkg -P "$pkg" >/dev/null 2>&1 || true; }
trap cleanup EXIT
dpkg -i "$deb"

echo "--- check the installed files"
version=$(dpkg-deb -f "$deb" Version)
out=$(/usr/bin/repo-deploy --version)
[[ $out == "repo-deploy ${version%-*}" ]] || fail "--version says '$out', the package is $version"
dpkg-deb -f "$deb" Recommends | grep -qw git || fail "the package does not recommend git (git remotes need it)"

cfg=/etc/repo-deploy/repo-deploy.cfg
[[ -f $cfg ]] || fail "$cfg missing"
[[ $(stat -c '%a %U' "$cfg") == "600 root" ]] || fail "$cfg: mode/owner $(stat -c '%a %U' "$cfg"), want 600 root"
dpkg-query --showformat='${Conffiles}\n' --show "$pkg" | grep -q " $cfg " || fail "$cfg is not a conffile"
for dir in pre-update.d post-update.d; do
  readme=/etc/repo-deploy/$dir/README
  [[ -f $readme ]] || fail "$readme missing"
  [[ ! -x $readme ]] || fail "$readme is executable: the hook runner would run it"
done

man_page=/usr/share/man/man1/repo-deploy.1.gz
[[ -f $man_page ]] || fail "$man_page missing"
[[ $(man -w repo-deploy) == "$man_page" ]] || fail "man -w repo-deploy: $(man -w repo-deploy)"
zcat "$man_page" | grep -q '^\.SH FILES' || fail "$man_page has no FILES section"
for sub in $(/usr/bin/repo-deploy --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p'); do
  [[ $sub == help ]] && continue
  [[ -f /usr/share/man/man1/repo-deploy-$sub.1.gz ]] || fail "no man page for '$sub'"
done

for f in /usr/share/bash-completion/completions/repo-deploy /usr/share/zsh/vendor-completions/_repo-deploy \
  /usr/share/fish/vendor_completions.d/repo-deploy.fish; do
  [[ -s $f ]] || fail "completion $f missing"
done
bash -n /usr/share/bash-completion/completions/repo-deploy || fail "bash completion does not parse"
# The README links into docs/: the reference pages ship beside it (cargo-deb may gzip them).
for page in README.md docs/CONFIGURATION.md docs/REMOTES.md docs/HOOKS.md docs/OPERATIONS.md; do
  f=/usr/share/doc/repo-deploy/$page
  [[ -s $f || -s $f.gz ]] || fail "$f missing: the README links to it"
done

unit=$(dpkg -L "$pkg" | grep -E '/systemd/system/repo-deploy\.service$') || fail "no systemd unit in the package"
[[ -f $unit ]] || fail "$unit missing"
grep -q '^ExecStart=/usr/bin/repo-deploy' "$unit" || fail "$unit does not start /usr/bin/repo-deploy"
if [[ -d /run/systemd/system ]]; then
  [[ $(systemctl is-enabled repo-deploy.service 2>&1) == disabled ]] || fail "the unit must not be enabled on install"
fi

echo "--- check-config with the shipped configuration"
set +e
/usr/bin/repo-deploy -c "$cfg" check-config >/dev/null 2>&1
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "check-config without a remote exited $rc, want 2"
/usr/bin/repo-deploy -c "$cfg" -r /srv/app.zip check-config >/dev/null || fail "the shipped configuration is invalid"

echo "--- dpkg -r, dpkg -P"
dpkg -r "$pkg" >/dev/null
[[ ! -e /usr/bin/repo-deploy && ! -e $unit && ! -e $man_page ]] || fail "dpkg -r left installed files behind"
[[ -f $cfg ]] || fail "dpkg -r removed the conffile $cfg (only a purge should)"
dpkg -P "$pkg" >/dev/null
[[ ! -e /etc/repo-deploy ]] || fail "dpkg -P left /etc/repo-deploy behind"
trap - EXIT
echo "test-package.sh: ok"
