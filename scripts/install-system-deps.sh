#!/usr/bin/env bash
# System packages the test suite uses, from Debian: the data set (offline machines) and
# headless Chromium (browser checks of DVC's plots page and the MLflow UI). Idempotent.
# When a package is needed and cannot be installed (no apt-get, or apt-get fails), it says so in
# one line and exits 1: the tests that need it would otherwise skip, and a CI run must not.
set -euo pipefail
bash "$(dirname "$0")/ensure-data-source.sh"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v npm >/dev/null 2>&1 || need+=(npm)  # vega for offline `dvc plots show`
# PostgreSQL for the team stack (make team-up) and the tests that run it
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: ${need[*]} needed and apt-get is not available to install them; install them with this system's package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for step in "update -qq" "install -y -qq ${need[*]}"; do
  # shellcheck disable=SC2086  # the step's words are apt-get's arguments
  status=0
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get $step >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    last=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 || true)
    echo "error: apt-get ${step%% *} failed (exit $status) installing ${need[*]}: ${last:-no output}" >&2
    exit 1
  fi
done
