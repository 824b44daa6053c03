#!/usr/bin/env bash
# Prepare a self-hosted CI runner host (Debian or Ubuntu, as root) for the image pipeline:
#   packages   Docker engine (docker.io), QEMU user emulation, python3, git, make, node/npm (lint)
#   engine     the Docker service running
#   gpu        the NVIDIA container toolkit when an NVIDIA driver is present; a CPU-only runner otherwise
#   binfmt     QEMU registered for arm64 binaries (Jetson and Raspberry Pi images build and run emulated)
#   builder    a buildx builder (docker-container driver) when buildx is installed; where it is not
#              packaged, the pipeline's plain `docker build` with BuildKit (PIPELINE_BUILDER=docker)
#   register   a GitLab runner (shell executor) or a GitHub Actions runner, from a token in the environment
# Every step checks first and changes only what is missing: a second run changes nothing.
#
#   sudo ci/setup-runner.sh --dry-run            # print every step: what is in place, what would run
#   sudo GITLAB_URL=https://gitlab.example GITLAB_RUNNER_TOKEN=glrt-... ci/setup-runner.sh
#   sudo GITHUB_URL=https://github.com/OWNER/REPO GITHUB_RUNNER_TOKEN=... ci/setup-runner.sh
#   sudo ci/setup-runner.sh --only binfmt,builder
#
# Settings (environment): GITLAB_URL + GITLAB_RUNNER_TOKEN, or GITHUB_URL + GITHUB_RUNNER_TOKEN (a
# registration token; none: registration is skipped with a note), RUNNER_NAME (default: host name),
# RUNNER_USER (GitHub runner's account, default defect-runner), GITHUB_RUNNER_VERSION and
# GITHUB_RUNNER_SHA256 (the runner tarball and its checksum), RUNNER_ETC (default /etc/defect-runner).
set -euo pipefail

dry=0 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --only) only=${2:?--only needs a comma list of steps}; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup-runner: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
STEPS="packages engine gpu binfmt builder register"
for s in ${only//,/ }; do
  [[ " $STEPS " == *" $s "* ]] || { echo "setup-runner: unknown step $s (one of: $STEPS)" >&2; exit 2; }
done
if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "setup-runner: run as root (or with --dry-run to see the steps)" >&2; exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-runner: this script prepares Debian or Ubuntu hosts (apt-get not found)" >&2; exit 2
fi

RUNNER_ETC=${RUNNER_ETC:-/etc/defect-runner}
NVIDIA_PROC=${NVIDIA_PROC:-/proc/driver/nvidia/version}
RUNNER_NAME=${RUNNER_NAME:-$(hostname)}
RUNNER_USER=${RUNNER_USER:-defect-runner}
GITHUB_RUNNER_VERSION=${GITHUB_RUNNER_VERSION:-2.329.0}
BUILDER=defect-builder
PACKAGES=(docker.io qemu-user-static binfmt-support python3 python3-venv git make nodejs npm curl ca-certificates gnupg)
changed=0 kept=0

say() { echo "$*"; }
# run CMD...: the change itself (printed; not run with --dry-run)
run() {
  if [ "$dry" = 1 ]; then say "    would run: $*"; else say "    + $*"; "$@"; fi
}
done_already() { say "    in place: $*"; kept=$((kept + 1)); }
changing() { say "    to do: $*"; changed=$((changed + 1)); }
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
# write_file PATH CONTENT: only when the content differs (atomic rename)
write_file() {
  if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then done_already "$1 up to date"; return; fi
  changing "write $1"
  if [ "$dry" = 1 ]; then say "    would write $1:"; printf '%s\n' "$2" | sed 's/^/      /'; return; fi
  mkdir -p "$(dirname "$1")" && printf '%s\n' "$2" > "$1.tmp" && mv "$1.tmp" "$1"
}
missing_packages() { for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done; }
apt_install() {
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

step_packages() {
  mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
  if [ ${#missing[@]} -eq 0 ]; then done_already "${PACKAGES[*]}"; else changing "install ${missing[*]}"; apt_install "${missing[@]}"; fi
}

step_engine() {
  if docker info >/dev/null 2>&1; then done_already "the Docker engine answers"; return; fi
  changing "start the Docker service"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    run systemctl enable --now docker
  else
    say "    no systemd here: start dockerd with this host's init system (or: service docker start)"
    run service docker start
  fi
}

step_gpu() {
  if [ ! -r "$NVIDIA_PROC" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    done_already "no NVIDIA driver ($NVIDIA_PROC absent, no nvidia-smi): a CPU-only runner." \
      "Images build and test on the CPU; the x86-cuda image is built and checked without a GPU."
    return
  fi
  say "    NVIDIA driver: $(head -n 1 "$NVIDIA_PROC" 2>/dev/null || nvidia-smi --query-gpu=driver_version --format=csv,noheader)"
  local keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
  local list=/etc/apt/sources.list.d/nvidia-container-toolkit.list
  if [ -z "$(missing_packages nvidia-container-toolkit)" ]; then
    done_already "nvidia-container-toolkit installed"
  else
    changing "install the NVIDIA container toolkit (NVIDIA's apt repository)"
    [ -f "$keyring" ] || run sh -c "curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor -o $keyring"
    write_file "$list" "deb [signed-by=$keyring] https://nvidia.github.io/libnvidia-container/stable/deb/\$(ARCH) /"
    apt_install nvidia-container-toolkit
  fi
  if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"'; then
    done_already "Docker knows the nvidia runtime"
  else
    changing "register the nvidia runtime with Docker"
    run nvidia-ctk runtime configure --runtime=docker
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then run systemctl restart docker; else run service docker restart; fi
  fi
}

step_binfmt() {
  if [ ! -f /proc/sys/fs/binfmt_misc/status ]; then
    changing "mount binfmt_misc"
    run mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  else
    done_already "binfmt_misc mounted"
  fi
  if grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
    done_already "qemu-aarch64 registered and enabled"
  else
    changing "register QEMU for arm64"
    run update-binfmts --enable qemu-aarch64
  fi
}

step_builder() {
  if docker buildx version >/dev/null 2>&1; then
    write_file "$RUNNER_ETC/env" "PIPELINE_BUILDER=bake"
    if docker buildx inspect "$BUILDER" >/dev/null 2>&1; then
      done_already "buildx builder $BUILDER"
    else
      changing "create the buildx builder $BUILDER"
      run docker buildx create --name "$BUILDER" --driver docker-container --use
      run docker buildx inspect --bootstrap "$BUILDER"
    fi
    return
  fi
  if apt-cache show docker-buildx >/dev/null 2>&1; then  # Ubuntu, Debian trixie
    changing "install docker-buildx (the builder is created on the next run)"
    apt_install docker-buildx
    return
  fi
  say "    buildx is not packaged for this distribution: the pipeline builds with plain docker build and"
  say "    BuildKit (DOCKER_BUILDKIT=1; Debian's docker.io client does it without buildx), one image per unit."
  say "    For bake, install docker-buildx-plugin from Docker's apt repository and run this step again."
  write_file "$RUNNER_ETC/env" "PIPELINE_BUILDER=docker"
}

step_register() {
  local settings=()
  if [ -f "$RUNNER_ETC/env" ]; then mapfile -t settings < "$RUNNER_ETC/env"; fi
  if [ -n "${GITLAB_RUNNER_TOKEN:-}" ]; then
    : "${GITLAB_URL:?GITLAB_URL must be set with GITLAB_RUNNER_TOKEN}"
    if [ -z "$(missing_packages gitlab-runner)" ]; then
      done_already "gitlab-runner installed"
    else
      changing "install gitlab-runner (GitLab's apt repository)"
      local keyring=/usr/share/keyrings/gitlab-runner.gpg
      [ -f "$keyring" ] || run sh -c "curl -fsSL https://packages.gitlab.com/runner/gitlab-runner/gpgkey | gpg --dearmor -o $keyring"
      # shellcheck source=/dev/null
      . /etc/os-release
      write_file /etc/apt/sources.list.d/gitlab-runner.list \
        "deb [signed-by=$keyring] https://packages.gitlab.com/runner/gitlab-runner/$ID/ $VERSION_CODENAME main"
      apt_install gitlab-runner
    fi
    if grep -qs "name = \"$RUNNER_NAME\"" /etc/gitlab-runner/config.toml && grep -qs "url = \"$GITLAB_URL" /etc/gitlab-runner/config.toml; then
      done_already "GitLab runner $RUNNER_NAME registered with $GITLAB_URL"
    else
      changing "register GitLab runner $RUNNER_NAME (shell executor) with $GITLAB_URL"
      local envs=()
      for kv in "${settings[@]}"; do envs+=(--env "$kv"); done
      say "    (token from GITLAB_RUNNER_TOKEN; the job tag defect-detection is set on the runner in GitLab)"
      [ "$dry" = 1 ] || usermod -aG docker gitlab-runner
      run_masked "$GITLAB_RUNNER_TOKEN" gitlab-runner register --non-interactive --url "$GITLAB_URL" \
        --token "$GITLAB_RUNNER_TOKEN" --executor shell --name "$RUNNER_NAME" "${envs[@]}"
    fi
  elif [ -n "${GITHUB_RUNNER_TOKEN:-}" ]; then
    : "${GITHUB_URL:?GITHUB_URL must be set with GITHUB_RUNNER_TOKEN}"
    local home=/opt/actions-runner arch labels=self-hosted,linux,defect-detection
    arch=$(dpkg --print-architecture); arch=${arch/amd64/x64}
    if [ -r "$NVIDIA_PROC" ]; then labels+=,gpu; fi
    if id "$RUNNER_USER" >/dev/null 2>&1; then done_already "user $RUNNER_USER"; else
      changing "create user $RUNNER_USER (in group docker)"; run useradd --create-home --groups docker "$RUNNER_USER"; fi
    if [ -x "$home/config.sh" ]; then done_already "GitHub runner $GITHUB_RUNNER_VERSION unpacked in $home"; else
      : "${GITHUB_RUNNER_SHA256:?GITHUB_RUNNER_SHA256 must be set: the checksum GitHub publishes for actions-runner-linux-$arch-$GITHUB_RUNNER_VERSION.tar.gz}"
      changing "download the GitHub runner $GITHUB_RUNNER_VERSION into $home (checksum verified)"
      local tarball=/tmp/actions-runner-$GITHUB_RUNNER_VERSION.tar.gz
      run curl -fsSL -o "$tarball" "https://github.com/actions/runner/releases/download/v$GITHUB_RUNNER_VERSION/actions-runner-linux-$arch-$GITHUB_RUNNER_VERSION.tar.gz"
      run sh -c "echo '$GITHUB_RUNNER_SHA256  $tarball' | sha256sum -c -"
      run mkdir -p "$home"
      run tar -xzf "$tarball" -C "$home"
      run chown -R "$RUNNER_USER" "$home"
    fi
    write_file "$home/.env" "$(printf '%s\n' "${settings[@]}")"
    if [ -f "$home/.runner" ]; then done_already "GitHub runner configured ($home/.runner)"; else
      changing "register GitHub runner $RUNNER_NAME with $GITHUB_URL (labels $labels) and start it as a service"
      run_masked "$GITHUB_RUNNER_TOKEN" runuser -u "$RUNNER_USER" -- "$home/config.sh" --unattended --url "$GITHUB_URL" \
        --token "$GITHUB_RUNNER_TOKEN" --name "$RUNNER_NAME" --labels "$labels" --replace
      run sh -c "cd $home && ./svc.sh install $RUNNER_USER && ./svc.sh start"
    fi
  else
    done_already "no runner token given (GITLAB_URL + GITLAB_RUNNER_TOKEN, or GITHUB_URL + GITHUB_RUNNER_TOKEN): not registering"
  fi
}

# run_masked SECRET CMD...: like run, with the secret replaced by *** in what is printed
run_masked() {
  local secret=$1; shift
  local shown="$*"
  if [ "$dry" = 1 ]; then say "    would run: ${shown//$secret/***}"; else say "    + ${shown//$secret/***}"; "$@"; fi
}

[ "$dry" = 1 ] && say "setup-runner: dry run: nothing is changed"
n=0
for s in $STEPS; do
  wanted "$s" || continue
  n=$((n + 1))
  say "== step $n: $s"
  "step_$s"
done
say "setup-runner: $changed change(s)$([ "$dry" = 1 ] && echo ' to make'), $kept already in place"
