#!/usr/bin/env bash
# Installs the peer proxies the harness compares Sluice with (Debian packages; run as root).
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx libnginx-mod-stream socat \
  openssh-server openssh-client >/dev/null
# The packaged services are not needed: the harness starts its own instances on loopback.
for s in haproxy nginx ssh; do (service "$s" stop || true) >/dev/null 2>&1; done
echo "peers installed: $(command -v haproxy nginx socat sshd | tr '\n' ' ')"
