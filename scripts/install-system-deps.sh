#!/usr/bin/env bash
# System packages the test suite uses, from Debian: the data set (offline machines) and
# headless Chromium (browser checks of DVC's plots page and the MLflow UI). Idempotent.
set -euo pipefail
bash "$(dirname "$0")/ensure-data-source.sh"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v npm >/dev/null 2>&1 || need+=(npm)  # vega for offline `dvc plots show`
# PostgreSQL for the team stack (scripts/team.py) and tests/test_team_stack.py
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: apt-get not available to install ${need[*]}; the tests that need them skip (and fail under CI=true)" >&2
    exit 0
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
