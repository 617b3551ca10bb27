# Sourced by ./run.sh and ./test.sh: create .venv and install the project on first use.
# torch is pinned to 2.13.0 here because that is the CPU build on the project's machines;
# an unpinned `torch` makes pip fetch a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.splitkd-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[splitkd] installing into $venv (first use; a few minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e "$root[test]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
# A SuperLink must never try to pip-install the app's dependencies (no internet on edge servers, and slow).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
