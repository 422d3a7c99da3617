#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests that start real services and run
# berth as an unprivileged user the harness creates. Run as root on Debian 12.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install-deps.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cd "$here"
cargo test --workspace --no-fail-fast 2>&1
