#!/usr/bin/env bash
# Compatibility wrapper: the old tunnel script's verbs, now `cargo xtask tunnel`.
#   start    open the tunnel in the background; returns once every forward is verified
#   stop     stop it (over its control socket, else by its checked pid)
#   restart  stop, then start in the background
#   status   state, forwards and counters; exit 0 up, 1 degraded, 3 not running, 4 unknown
#   logs     the tunnel's log (-f follows)
# Extra arguments pass through, e.g. `elasticache-tunnel.sh status --json`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

verb="${1:-}"
[ $# -gt 0 ] && shift
case "$verb" in
    start) exec cargo xtask tunnel start --detach "$@" ;;
    restart) exec cargo xtask tunnel restart --detach "$@" ;;
    stop | status | logs) exec cargo xtask tunnel "$verb" "$@" ;;
    *)
        echo "usage: $0 start|stop|restart|status|logs [options]" >&2
        echo "(a wrapper over \`cargo xtask tunnel\`; see \`cargo xtask tunnel --help\`)" >&2
        exit 2
        ;;
esac
