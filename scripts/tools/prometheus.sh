#!/usr/bin/env bash
# Install prometheus + promtool (Debian bookworm's `prometheus`, 2.42) and amtool (`prometheus-alertmanager`,
# 0.25) for the monitoring tests (idempotent). The packages' system services are NOT started: a temporary
# policy-rc.d refuses every service start during the install, and the tests run the binaries themselves on
# 127.0.0.1. Links go into .tools/bin/ so the tests find them the same way as the other tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.tools/bin
mkdir -p "$BIN"

have() { command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null; }
if ! have; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  policy=/usr/sbin/policy-rc.d
  restore=""
  if [ -e "$policy" ]; then restore=$(mktemp) && $SUDO cp -p "$policy" "$restore"; fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 0755 "$policy"
  cleanup() { if [ -n "$restore" ]; then $SUDO mv "$restore" "$policy"; else $SUDO rm -f "$policy"; fi; }
  trap cleanup EXIT
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
fi
for tool in prometheus promtool amtool; do
  ln -sf "$(command -v "$tool")" "$BIN/$tool"
done
echo "prometheus: $("$BIN/prometheus" --version 2>&1 | head -1)"
echo "amtool: $("$BIN/amtool" --version 2>&1 | head -1)"
