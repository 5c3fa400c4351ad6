#!/usr/bin/env bash
# Compatibility wrapper: the old foreground `ssh -L` to ElastiCache, now the
# native tunnel of `cargo xtask tunnel start` (host key verified, kept alive,
# reconnected). Ctrl+C stops it. Arguments pass through, e.g. `--detach`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
exec cargo xtask tunnel start "$@"
