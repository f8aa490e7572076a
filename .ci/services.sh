# Sourced by .ci/run: installs PostgreSQL and Redis from the distribution's packages if missing,
# starts private instances on 127.0.0.1, and exports the variables the server suites read:
#   TOWER_API_KEY_POSTGRES_URL, TOWER_API_KEY_POSTGRES_STOP, TOWER_API_KEY_POSTGRES_START
#   TOWER_API_KEY_REDIS_URL,    TOWER_API_KEY_REDIS_STOP,    TOWER_API_KEY_REDIS_START
# The instances are stopped when the sourcing shell exits.

PG_PORT=${PG_PORT:-55432}
REDIS_PORT=${REDIS_PORT:-56379}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ] || ! command -v redis-server >/dev/null; then
  echo "installing postgresql and redis-server from the distribution's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q postgresql redis-server
fi
PGBIN=$(pg_bin)

SERVICES_DIR=$(mktemp -d /tmp/tower-api-key-ci.XXXXXX)
chmod 755 "$SERVICES_DIR"

# PostgreSQL refuses to run as root: run it as the postgres user, data in a fresh directory.
PGDATA="$SERVICES_DIR/pg"
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
as_postgres "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >"$SERVICES_DIR/initdb.log" 2>&1
PG_OPTS="-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PGDATA"
export TOWER_API_KEY_POSTGRES_START="$( [ "$(id -u)" = 0 ] && echo "runuser -u postgres -- ")$PGBIN/pg_ctl -D $PGDATA -o '$PG_OPTS' -l $PGDATA/server.log -w start"
export TOWER_API_KEY_POSTGRES_STOP="$( [ "$(id -u)" = 0 ] && echo "runuser -u postgres -- ")$PGBIN/pg_ctl -D $PGDATA -m fast -w stop"
export TOWER_API_KEY_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
sh -c "$TOWER_API_KEY_POSTGRES_START" >/dev/null

export TOWER_API_KEY_REDIS_START="redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir $SERVICES_DIR --pidfile $SERVICES_DIR/redis.pid --logfile $SERVICES_DIR/redis.log"
# Stopping saves the data set (as a real restart would keep it), starting loads it back.
export TOWER_API_KEY_REDIS_STOP="redis-cli -p $REDIS_PORT shutdown save"
export TOWER_API_KEY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
sh -c "$TOWER_API_KEY_REDIS_START"
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

stop_services() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  sh -c "$TOWER_API_KEY_POSTGRES_STOP" >/dev/null 2>&1 || true
  rm -rf "$SERVICES_DIR"
}
trap stop_services EXIT
echo "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT"
