#!/usr/bin/env bash
# The CI pipeline on one machine, for users without a CI server: the same stages as
# .github/workflows/platforms.yml and .gitlab-ci.yml (all in ci/pipeline.py), with a local Docker
# engine (started privately by ci/engine.py when none answers) and a loopback registry.
#
#   ci/run-local.sh                                   # lint, unit tests, every image: build, test, push
#   ci/run-local.sh --stages images --units x86-cpu-amd64,datatool-synthetic-amd64
#   ci/run-local.sh --stages images --targets rpi4 --registry registry.lan:5000/defect
#   make pipeline ARGS="--stages images --units x86-cpu-amd64"
#
# Options: --stages (comma list of lint, unit, images; default all), --targets (bake targets or
# groups; default: the group "default"), --units (unit ids, e.g. rpi4-arm64; narrows --targets),
# --registry (push there instead of a loopback registry started here), --offline (build from
# local stand-in bases and a host-made wheelhouse, for machines that cannot pull: ci/base-images.py,
# ci/wheelhouse.py; the default when no registry answers from here is to try the public bases).
# Every image stage goes on when another fails (no fail-fast); an image is pushed only when its
# tests passed. At the end one mail lists the failed stages (SMTP_* and NOTIFY_* settings, see
# ci/notify.py); without them the mail step says so. The exit status is the pipeline's: 0 when
# every stage passed, 1 otherwise, whatever the mail step did. Outputs: $PIPELINE_OUT (out/ci).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

stages=lint,unit,images targets="" only="" registry="" offline=0
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) stages=${2:?--stages needs a value}; shift 2 ;;
    --targets) targets=${2:?--targets needs a value}; shift 2 ;;
    --units) only=${2:?--units needs a value}; shift 2 ;;
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --offline) offline=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run-local: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for s in ${stages//,/ }; do
  case "$s" in lint|unit|images) ;; *) echo "run-local: unknown stage $s (lint, unit, images)" >&2; exit 2 ;; esac
done

PY=${PYTHON:-python3}
export PIPELINE_OUT=${PIPELINE_OUT:-out/ci}
# One commit id for the whole run, even if HEAD moves meanwhile (-dirty: uncommitted changes are built).
PIPELINE_COMMIT=${PIPELINE_COMMIT:-$("$PY" ci/pipeline.py commit)} || exit 2
export PIPELINE_COMMIT
rm -rf "$PIPELINE_OUT" && mkdir -p "$PIPELINE_OUT"
status=0
has() { [[ ",$stages," == *",$1,"* ]]; }
stage() { "$PY" ci/pipeline.py "$@" || status=1; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [ -n "${registry_dir:-}" ]; then "$PY" ci/engine.py registry-down --dir "$registry_dir" || true; fi
  if [ -n "${engine_started:-}" ]; then "$PY" ci/engine.py down || true; fi
}
trap cleanup EXIT

has lint && stage lint
has unit && stage unit

if has images; then
  [ "$offline" = 1 ] && export PIPELINE_OFFLINE=1
  read -ra names <<< "${targets//,/ }"
  "$PY" ci/pipeline.py stage plan -- "$PY" ci/pipeline.py units --output "$PIPELINE_OUT/units.txt" \
    ${only:+--only "$only"} "${names[@]}" || status=1
  if [ -s "$PIPELINE_OUT/units.txt" ] && ! "$PY" ci/engine.py status 2>/dev/null; then
    if env_lines=$("$PY" ci/pipeline.py stage engine -- "$PY" ci/engine.py up | grep '^export '); then
      eval "$env_lines"; engine_started=1
      export PIPELINE_BUILD_NETWORK=host  # the private engine has no bridge network
    else
      status=1
    fi
  fi
  if [ -s "$PIPELINE_OUT/units.txt" ] && "$PY" ci/engine.py status 2>/dev/null; then
    if [ -z "$registry" ]; then
      registry_dir=$(mktemp -d "${TMPDIR:-/tmp}/defect-registry-XXXXXX")
      eval "$("$PY" ci/engine.py registry-up --dir "$registry_dir")"
      registry="$DEFECT_REGISTRY/defect"
    fi
    export REGISTRY=$registry
    if grep -q ' linux/arm64$' "$PIPELINE_OUT/units.txt"; then stage stage binfmt -- "$PY" ci/engine.py binfmt; fi
    while read -r unit _target _platform <&3; do
      if "$PY" ci/pipeline.py build "$unit" && "$PY" ci/pipeline.py test "$unit"; then
        stage push "$unit"
      else
        status=1
      fi
    done 3< "$PIPELINE_OUT/units.txt"
  fi
fi

if [ $status -ne 0 ]; then
  "$PY" ci/pipeline.py notify --pipeline-failed || echo "run-local: warning: the failure mail was not sent (see above); the pipeline's status is kept" >&2
  echo "run-local: pipeline FAILED; logs in $PIPELINE_OUT/logs" >&2
else
  pushed=("$PIPELINE_OUT"/pushed/*.json)
  [ -e "${pushed[0]}" ] || pushed=()
  echo "run-local: pipeline passed; ${#pushed[@]} image(s) pushed (records in $PIPELINE_OUT/pushed)"
fi
exit $status
