#!/usr/bin/env bash
# System packages for the RTSP tests: GStreamer's RTSP server + its Python bindings, which are
# Debian packages for the SYSTEM python (/usr/bin/python3), not pip packages. Idempotent: apt runs
# only when something is missing. Without root (and no sudo) it warns and carries on: the RTSP
# tests then skip with a reason instead of failing.
set -euo pipefail

PACKAGES=(
  python3-gi
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-rtsp
  gstreamer1.0-tools
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  libjemalloc2
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: all system packages present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install-system-deps: WARNING: not root and no sudo; missing: ${missing[*]} (RTSP tests will skip)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: WARNING: no apt-get; missing: ${missing[*]} (RTSP tests will skip)" >&2
  exit 0
fi

echo "install-system-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
