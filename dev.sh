#!/usr/bin/env bash
# One command to set up and run. Debian 12 or 13, as root or with sudo.
#
#   ./dev.sh serve   install everything, render prompts, run the server with the demo flow
#   ./dev.sh test    install everything, run the whole test suite
#   ./dev.sh reliability   the reliability suite alone; regenerates docs/reliability.md
#   ./dev.sh soak    the 10-minute soak; regenerates docs/reliability.md
#
# Safe to re-run: system packages and Python packages are installed only when missing.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc git ca-certificates
  espeak-ng libespeak-ng1 ffmpeg sox graphviz
  chromium fonts-noto-cjk
)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to install: ${APT_PACKAGES[*]}" >&2; exit 1; fi
}

install_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

pick_python() {
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return
    fi
  done
  echo "Python 3.11 or newer is needed" >&2; exit 1
}

install_python() {
  local stamp=.venv/.installed
  local want
  want=$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $(pick_python)"
    "$(pick_python)" -m venv .venv
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python packages"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  serve)
    install_system
    install_python
    mkdir -p var
    if .venv/bin/ivr --help 2>/dev/null | grep -q prompts; then
      say "rendering prompt audio (cached: only new or changed prompts are synthesised)"
      .venv/bin/ivr prompts build flows/*.yaml || say "prompt rendering failed: calls will fall back to synthesis"
    fi
    say "starting the server: FastAGI agi://127.0.0.1:4573/demo_hotline, web http://127.0.0.1:8080/"
    say "try a call from another terminal: .venv/bin/ivr call demo_hotline --agi 127.0.0.1:4573 --keys '1 1 20240001# 110105199003071239# 1 0'"
    exec .venv/bin/ivr serve "$@"
    ;;
  test)
    install_system
    install_python
    say "running the test suite"
    set +e
    .venv/bin/python -m pytest "$@"
    rc=$?
    set -e
    if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
    exit $rc
    ;;
  reliability)
    install_system
    install_python
    say "running the reliability and security suite; results to docs/reliability/, report to docs/reliability.md"
    exec .venv/bin/python -m pytest tests -m reliability --reliability-out=docs/reliability -p no:cacheprovider "$@"
    ;;
  soak)
    install_system
    install_python
    say "running the soak (200 paced calls for 10 minutes; IVR_SOAK_MINUTES and IVR_SOAK_CALLS change it)"
    exec .venv/bin/python -m pytest tests/reliability --soak --reliability-out=docs/reliability -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: ./dev.sh serve [ivr serve options] | ./dev.sh test [pytest options]" >&2
    echo "       ./dev.sh reliability [pytest options] | ./dev.sh soak [pytest options]" >&2
    exit 2
    ;;
esac
