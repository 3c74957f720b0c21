#!/usr/bin/env bash
# Installs the Debian packages the tests need, only when something is missing, so a warm
# machine pays nothing and a fresh Debian 12 machine gets everything.
#   curl           real `curl --aws-sigv4` as an independent SigV4 signer (curl >= 7.75)
#   python3-venv   `python3 -m venv` on Debian's own Python
#   softhsm2       a real PKCS#11 token (libsofthsm2.so, softhsm2-util) for the HSM backend tests
#   haproxy        a real load balancer in front of three proxies for the rolling-restart test
#   prometheus     `promtool check metrics`, `promtool check|test rules`, and a real Prometheus
#                  scraping a proxy for the Grafana dashboard's queries
#   logrotate      real log rotation (with compress) of the audit log under load
#   postgresql     initdb/pg_ctl/postgres for the shared key store tests, which start their own
#                  server in a temporary directory (tests/postgres.py); Debian's default cluster
#                  is neither created nor started for them
#   systemd        `systemd-analyze verify` and `security` on deploy/systemd/xks-proxy.service
set -euo pipefail

need=()
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
# haproxy and logrotate live in /usr/sbin, outside a normal user's PATH.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need+=(logrotate)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
#   wrk, taskset   closed-loop load and core pinning for `make bench` (--bench)
if [ "${1:-}" = "--bench" ]; then
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v taskset >/dev/null 2>&1 || need+=(util-linux)
fi
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
if [[ " ${need[*]} " == *" postgresql "* ]]; then
    # The tests run their own server as the postgres user; the package's own cluster would be a
    # service nobody asked for. postgresql-common reads this directory when it would create it.
    $sudo mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" |
        $sudo tee /etc/postgresql-common/createcluster.d/xks-proxy-tests.conf >/dev/null
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
