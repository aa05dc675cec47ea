#!/usr/bin/env bash
# Installs what kvmtrace needs to build and test on a Debian 12 machine of the project's kind.
# Idempotent: each step checks first and is skipped in well under a second when already satisfied.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

APT_PKGS=(llvm-22-dev libclang-22-dev zlib1g-dev libzstd-dev bpftool bpftrace)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "rustup component add rust-src --toolchain nightly"
    rustup component add rust-src --toolchain nightly
fi

# bpf-linker's LLVM major must equal the nightly's (LLVM 22 here); default features pull llvm-23.
if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
    log "cargo install bpf-linker 0.13.0 (llvm-22), about 2 minutes"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --version 0.13.0 --locked \
        --no-default-features --features llvm-22
fi

if [ ! -e /sys/kernel/tracing/events ]; then
    log "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing
fi
