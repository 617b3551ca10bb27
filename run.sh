#!/usr/bin/env bash
# Run the main job (creates .venv on first use). Extra arguments go to `splitkd simulate`.
source "$(dirname "$0")/scripts/env.sh"
cd "$root"
exec splitkd simulate "$@"
