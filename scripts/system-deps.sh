#!/usr/bin/env bash
# System tools some tests and examples use: espeak-ng (scripted speech for the audio set),
# ffmpeg (media decoding checks), chromium (the gallery screenshot check).
# Installs the missing ones with apt when run as root; otherwise prints the command and the
# tests that need them skip with that reason.
set -euo pipefail
declare -A PKG=([espeak-ng]=espeak-ng [ffmpeg]=ffmpeg [chromium]=chromium)
missing=()
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
else
  echo "system-deps: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi
exit 0
