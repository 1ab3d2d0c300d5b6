#!/usr/bin/env bash
# Fails when any file of the project refers to a path outside it (the brief and references the
# project started from are not part of a clone). Lists every offending line.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The pattern is assembled so that this file does not match itself.
outside='\.\./'"shared"'|/work/'"shared"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  hits=$(git grep -n -I -E "$outside" -- . || true)
else
  hits=$(grep -rn -I -E "$outside" --exclude-dir=.git --exclude-dir='build*' . || true)
fi
if [ -n "$hits" ]; then
  echo "references to paths outside the project:"
  echo "$hits"
  exit 1
fi
echo "no reference outside the project"
