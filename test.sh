#!/usr/bin/env bash
# Run the test suite (creates .venv on first use). Extra arguments go to pytest.
source "$(dirname "$0")/scripts/env.sh"
cd "$root"
exec python -m pytest "$@"
