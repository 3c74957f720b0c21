#!/usr/bin/env bash
# Installs the Debian packages the tests need, only when something is missing, so a warm
# machine pays nothing and a fresh Debian 12 machine gets everything.
#   curl           real `curl --aws-sigv4` as an independent SigV4 signer (curl >= 7.75)
#   python3-venv   `python3 -m venv` on Debian's own Python
set -euo pipefail

need=()
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

if ((${#need[@]} == 0)); then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
