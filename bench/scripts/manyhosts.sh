#!/usr/bin/env bash
# Many worker processes against one server (issue 18, "Many hosts"): insert
# a burn-down of no-op jobs with plain SQL, start PROCS processes of
# examples/worker with -concurrency CONC each, wait until no job is live,
# and report from the database's clock (first claim to last completion)
# the rate, the jobs claimed more than once, the jobs not complete, and the
# most connections the database had during the drain.
#
# Usage (from the repository root):
#   bench/scripts/manyhosts.sh PROCS CONC [JOBS]        e.g. bench/scripts/manyhosts.sh 10 100 200000
# Environment: ADMIN_URL, a superuser URL of the server
# (default postgres://postgres@127.0.0.1:5432/postgres); DB, the database
# to create and drop (default hosts10; an existing one is dropped first);
# BOUNCER=listen or BOUNCER=poll puts the workers behind a PgBouncer of the
# script's own (transaction mode, default_pool_size POOL, default 20),
# with DIRECT_URL, the server itself, for Migrate's lock and, with listen,
# LISTEN; with poll they do not listen (-poll-only). KEEP=1 keeps the
# workers' logs and the database (the script says where).
set -euo pipefail

procs=${1:?usage: bench/scripts/manyhosts.sh PROCS CONC [JOBS]}
conc=${2:?usage: bench/scripts/manyhosts.sh PROCS CONC [JOBS]}
jobs=${3:-200000}
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=${DB:-hosts10}
dburl=${admin%/*}/$db

work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -f "$work/pgbouncer.pid" ]; then kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true; sleep 0.5; fi
	if [ -n "${KEEP:-}" ]; then
		echo "logs kept in $work, database $db kept" >&2
	else
		rm -rf "$work"
		psql -q "$admin" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
	fi
}
trap cleanup EXIT
case ${BOUNCER:-} in
'' | listen | poll) ;;
*) echo "BOUNCER must be listen or poll, not $BOUNCER" >&2; exit 2 ;;
esac

go build -o "$work/worker" ./examples/worker
workerurl=$dburl
if [ -n "${BOUNCER:-}" ]; then
	# PgBouncer refuses to run as root: its files belong to postgres.
	bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	hostport=${admin#*@}; hostport=${hostport%%/*}
	cat >"$work/pgbouncer.ini" <<INI
[databases]
* = host=${hostport%:*} port=${hostport#*:}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = ${POOL:-20}
max_client_conn = 5000
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
	echo '"postgres" ""' >"$work/userlist.txt"
	chmod 755 "$work"
	if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$work"; runas=(runuser -u postgres --); else runas=(); fi
	"${runas[@]}" "$(command -v pgbouncer || echo /usr/sbin/pgbouncer)" -d "$work/pgbouncer.ini"
	sleep 1
	workerurl=postgres://postgres@127.0.0.1:$bport/$db
fi
go build -o "$work/compute" ./cmd/compute
psql -q "$admin" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\"" >/dev/null
DATABASE_URL=$dburl "$work/compute" migrate >/dev/null

# The v1 columns only, as another program would insert them.
psql -q "$dburl" <<SQL
INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
SELECT decode(md5(i::text), 'hex'), 'queued', 'burn', '{}', '{}', now(), now()
FROM generate_series(1, $jobs) i;
VACUUM ANALYZE compute.jobs;
CHECKPOINT;
SQL

extra=()
[ "${BOUNCER:-}" = poll ] && extra=(-poll-only)
direct=
[ -n "${BOUNCER:-}" ] && direct=$dburl # Migrate's lock (and LISTEN, unless poll)
for i in $(seq "$procs"); do
	DATABASE_URL=$workerurl DIRECT_URL=$direct "$work/worker" -queues burn -concurrency "$conc" "${extra[@]}" 2>"$work/w$i.log" &
	pids+=($!)
done

# Poll twice a second: live jobs, and the database's connections.
maxconns=0
while :; do
	read -r live conns < <(psql -Atq -F ' ' "$dburl" -c "
SELECT (SELECT count(*) FROM compute.jobs WHERE status IN ('queued', 'in-progress')),
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())")
	((conns > maxconns)) && maxconns=$conns
	((live == 0)) && break
	sleep 0.5
done

psql -Atq "$dburl" -c "
SELECT format('procs=%s concurrency=%s jobs=%s seconds=%s jobs_per_s=%s claimed_twice=%s not_complete=%s max_connections_seen=%s',
  $procs, $conc, count(*),
  round(extract(epoch FROM max(finished) - min(grabbed))::numeric, 2),
  round(count(*) / extract(epoch FROM max(finished) - min(grabbed))::numeric),
  count(*) FILTER (WHERE attempt <> 1), count(*) FILTER (WHERE status <> 'complete'), $maxconns)
FROM compute.jobs"
