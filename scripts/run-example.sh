#!/usr/bin/env bash
# scripts/run-example.sh — the main job: build the example monorepo with `bk-build bake`.
# Uses a reachable BuildKit if there is one ($BUILDKIT_HOST, the buildkitd sockets, or
# $DOCKER_HOST); otherwise starts the project's private Docker Engine + registry
# (scripts/bkenv/up.sh) first. Extra arguments go to `bk-build bake`.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[example] %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH=$HOME/.cargo/bin:$PATH; fi
# Not -q: a first build compiles ~200 crates, and a silent wait of minutes looks like a hang.
# Cargo shows a progress bar on a terminal and one line per crate otherwise.
[ -x target/release/bk-build ] || log "compiling bk-build (release; the first time takes a few minutes)"
cargo build --release --locked
BK=$PWD/target/release/bk-build

if ! "$BK" info >/dev/null 2>&1; then
  export BKENV=${BKENV:-/tmp/bkenv}
  if [ ! -s "$BKENV/env.sh" ] || ! (source "$BKENV/env.sh" && "$BK" info >/dev/null 2>&1); then
    log "no BuildKit reachable: starting the local test daemon (scripts/bkenv/up.sh)"
    command -v ip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null; }
    # the example needs only the primary engine (not the TLS engine and sshd of the tests)
    BKENV_NO_TLS=1 bash scripts/bkenv/up.sh
  fi
  # shellcheck disable=SC1091
  source "$BKENV/env.sh"
fi
"$BK" info
cd examples/monorepo
exec "$BK" bake "$@"
