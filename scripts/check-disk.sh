#!/usr/bin/env bash
# Fails at once, in one line, where the temp folder has too little room for the test suite: its
# temp repos, pipelines, data and servers peak near 7 GB, and a disk that fills midway fails
# dozens of tests with ENOSPC instead. Used by .ci/run and the GitHub workflow.
set -euo pipefail
tmp="${TMPDIR:-/tmp}"
need_gb="${1:-8}"
free_gb=$(df -Pk "$tmp" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "$tmp has $free_gb GB free; the test suite needs $need_gb GB (its temp repos peak near 7 GB)" >&2
  exit 1
fi
