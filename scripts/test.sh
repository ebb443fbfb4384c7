#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, from a fresh Debian bookworm machine (root).
# Installs what is missing, starts a private Docker Engine (embedded BuildKit, containerd image
# store) and a local registry on 127.0.0.1:5000 (scripts/bkenv/up.sh), then runs lints, unit
# tests and the integration tests against that real daemon. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test] %s\n' "$*" >&2; }

# ---- prerequisites: apt packages the environment script needs, and the Rust toolchain.
need=()
command -v ip >/dev/null || need+=(iproute2)
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
command -v python3 >/dev/null || need+=(python3)
command -v git >/dev/null || need+=(git)
command -v cc >/dev/null || need+=(gcc)
command -v openssl >/dev/null || need+=(openssl)          # the TLS engine's certificates
command -v ssh >/dev/null || need+=(openssh-client)       # DOCKER_HOST=ssh:// tests
command -v unshare >/dev/null || need+=(util-linux)       # the test sshd's mount namespace
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }

# ---- the daemon under test
export BKENV=${BKENV:-/tmp/bkenv}
# Daemons that are not running start empty: what earlier runs left (build cache, images,
# registry contents) slows every build of the suite, and the suite must not depend on it.
# Daemons already running are used as they are (scripts/bkenv/down.sh first to start over).
BKENV_FRESH=${BKENV_FRESH:-1} bash scripts/bkenv/up.sh
# shellcheck disable=SC1091
source "$BKENV/env.sh"

# ---- lints and tests
# A suite run compiles once from scratch far more often than it recompiles; incremental
# compilation only adds work (and gigabytes of cache) to that.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test (unit + integration against $DOCKER_HOST)"
# Integration tests share one daemon; two at a time keeps a 2-core machine responsive.
cargo test --locked --all-targets -- --test-threads="${BK_TEST_THREADS:-2}"
