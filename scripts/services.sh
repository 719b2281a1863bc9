#!/usr/bin/env bash
# Start the machine's PostgreSQL, RabbitMQ and Redis when they are installed but
# stopped, and wait until each answers. Services that are not installed are left
# alone: the suite then runs on the embedded defaults and skips what needs them.
set -uo pipefail

wait_for() {  # name, probe command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then echo "services: $name is up"; return 0; fi
    sleep 1
  done
  echo "services: $name did not come up" >&2
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  if ! port_open 5432; then
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_for PostgreSQL port_open 5432
fi

if command -v rabbitmq-server >/dev/null 2>&1; then
  if ! port_open 5672; then
    rabbitmq-server -detached || true
  fi
  wait_for RabbitMQ port_open 5672
fi

if command -v redis-server >/dev/null 2>&1; then
  if ! port_open 6379; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  fi
  wait_for Redis port_open 6379
fi
