#!/usr/bin/env bash
# CI's services (called by .ci/run after scripts/install.sh, which installs them where they are missing): start the
# machine's PostgreSQL and Redis when they do not answer, wait up to 30 s for both, stop naming any that still does
# not; then make the machine's PostgreSQL accept what the tests (tests/fixtures/services.py) and
# `up --use-existing-services` connect with: user postgres over TCP from 127.0.0.1, without a password.
# A fresh `apt-get install postgresql` wants one (scram-sha-256): then, and for CI only, trust lines for postgres
# from 127.0.0.1 and ::1 go at the top of that cluster's pg_hba.conf, and the cluster reloads.
# For tests, the environment can point this at another cluster:
#   SLUICE_CI_PG_PORT    its port on 127.0.0.1 (5432)
#   SLUICE_CI_PG_HBA     its pg_hba.conf (/etc/postgresql/<newest version>/main/pg_hba.conf)
#   SLUICE_CI_PG_RELOAD  the command that reloads it (pg_ctlcluster --skip-systemctl-redirect <version> main reload)
set -euo pipefail

pg_port=${SLUICE_CI_PG_PORT:-5432}
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)   # the newest when several are installed

if ! pg_isready -h 127.0.0.1 -p "$pg_port" -q 2>/dev/null; then
  if [ -z "$version" ]; then
    echo "ci: PostgreSQL on 127.0.0.1:$pg_port does not answer and /etc/postgresql has no cluster to start" >&2
    exit 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p "$pg_port" -q && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
  sleep 1
done
silent=()
pg_isready -h 127.0.0.1 -p "$pg_port" -q 2>/dev/null || silent+=("PostgreSQL on 127.0.0.1:$pg_port")
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || silent+=("Redis on 127.0.0.1:6379")
if ((${#silent[@]})); then
  for service in "${silent[@]}"; do
    echo "ci: $service does not answer after 30 s: see its log (/var/log/postgresql/, /var/log/redis/)" >&2
  done
  exit 1
fi

refused() {  # psql's error when postgres cannot connect over TCP without a password; empty when it can
  psql -h 127.0.0.1 -p "$pg_port" -U postgres -w -d postgres -Atqc "select 1" 2>&1 >/dev/null || true
}
if refused | grep -q "no password supplied"; then
  hba=${SLUICE_CI_PG_HBA:-${version:+/etc/postgresql/$version/main/pg_hba.conf}}
  reload=${SLUICE_CI_PG_RELOAD:-${version:+pg_ctlcluster --skip-systemctl-redirect $version main reload}}
  if [ -z "$hba" ] || [ ! -f "$hba" ] || [ -z "$reload" ]; then
    echo "ci: PostgreSQL on 127.0.0.1:$pg_port wants a password for postgres over TCP, and its pg_hba.conf" \
         "is not in /etc/postgresql (set SLUICE_CI_PG_HBA and SLUICE_CI_PG_RELOAD)" >&2
    exit 1
  fi
  echo "ci: PostgreSQL on 127.0.0.1:$pg_port wants a password for postgres over TCP (a fresh install's" \
       "scram-sha-256); the tests connect without one: trusting postgres from 127.0.0.1 and ::1 in $hba"
  # Rewritten in place (same file, owner and mode): the first matching line wins, so these go first.
  lines=$(printf '%s\n' "# added by scripts/ci-services.sh (CI): the tests connect as postgres without a password" \
    "host all postgres 127.0.0.1/32 trust" "host all postgres ::1/128 trust")
  body=$(cat "$hba")
  printf '%s\n%s\n' "$lines" "$body" > "$hba"
  eval "$reload"
  for _ in $(seq 1 10); do
    [ -z "$(refused)" ] && break
    sleep 0.5
  done
  if [ -n "$(refused)" ]; then
    echo "ci: PostgreSQL on 127.0.0.1:$pg_port still refuses postgres after the reload: $(refused)" >&2
    exit 1
  fi
fi
