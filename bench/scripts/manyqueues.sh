#!/usr/bin/env bash
# Many queues, measured from outside: worker processes (examples/worker)
# serving N queues against a database of their own on a PostgreSQL server
# reached through psql's usual environment (PGHOST, PGPORT, PGUSER; the
# role must be able to create databases).
#
#   bench/scripts/manyqueues.sh idle WORKER_BIN QUEUES PROCS [SECONDS]
#       idle workers: transactions/s of their database (pg_stat_database),
#       CPU of the worker processes and of their server backends
#   bench/scripts/manyqueues.sh drain WORKER_BIN QUEUES JOBS PROCS CONCURRENCY
#       JOBS queued jobs spread over QUEUES, inserted with plain SQL with
#       random ids, drained by PROCS workers with -concurrency CONCURRENCY
#       (per queue); rate by the database clock (first claim to last
#       finish), the latest first claim of any queue, the longest drain of
#       any queue, and the highest attempt (1: no job ran twice)
#
# Build the worker first: go build -o /tmp/worker ./examples/worker
set -euo pipefail
mode=$1 bin=$2 nq=$3
db="manyqueues_$$"
sql() { psql -Atq -v ON_ERROR_STOP=1 "$@"; }
sql -d postgres -c "CREATE DATABASE $db"
url="postgres://${PGUSER:-postgres}@${PGHOST:-127.0.0.1}:${PGPORT:-5432}/$db?sslmode=disable"
queues=$(seq -f "q%g" 1 "$nq" | paste -sd,)
pids=()
cleanup() {
	[ "${#pids[@]}" -gt 0 ] && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
	sql -d postgres -c "DROP DATABASE $db WITH (FORCE)"
}
trap cleanup EXIT
start() { # start PROCS workers with extra flags
	local procs=$1; shift
	for i in $(seq 1 "$procs"); do
		DATABASE_URL=$url "$bin" -queues "$queues" "$@" >"${TMPDIR:-/tmp}/$db-worker$i.log" 2>&1 &
		pids+=($!)
	done
}
# The schema: a worker migrates it (WithMigrate) and is stopped.
DATABASE_URL=$url timeout 10 "$bin" -queues migrate >/dev/null 2>&1 || true

case $mode in
idle)
	procs=$4 secs=${5:-20}
	start "$procs"
	sleep "${WARMUP:-20}" # every fetcher's first claim
	xacts() { sql -d postgres -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '$db'"; }
	ticks() { awk '{s += $14 + $15} END {print s}' "$@"; }
	backends() { sql -d postgres -c "SELECT '/proc/' || pid || '/stat' FROM pg_stat_activity WHERE datname = '$db'"; }
	procstats=$(printf '/proc/%s/stat ' "${pids[@]}")
	bstats=$(backends)
	x0=$(xacts) w0=$(ticks $procstats) b0=$(ticks $bstats)
	sleep "$secs"
	x1=$(xacts) w1=$(ticks $procstats) b1=$(ticks $bstats)
	hz=$(getconf CLK_TCK)
	echo "idle: queues=$nq procs=$procs transactions/s=$(((x1 - x0) / secs))" \
		"worker_cpu=$(echo "scale=3; ($w1 - $w0) / $hz / $secs" | bc)" \
		"server_cpu=$(echo "scale=3; ($b1 - $b0) / $hz / $secs" | bc) (cores)"
	;;
drain)
	jobs=$4 procs=$5 conc=$6
	sql -d "$db" -c "INSERT INTO compute.jobs (job_id, status, queue, config, input_files, created, last_accessed)
		SELECT decode(md5(random()::text || g), 'hex'), 'queued', 'q' || (1 + g % $nq), '{}', '{}', now(), now()
		FROM generate_series(1, $jobs) g"
	sql -d "$db" -c "VACUUM ANALYZE compute.jobs"
	start "$procs" -concurrency "$conc"
	until [ "$(sql -d "$db" -c "SELECT count(*) FROM compute.jobs WHERE status IN ('queued', 'in-progress')")" = 0 ]; do
		sleep 1
	done
	sql -d "$db" -c "
		WITH per_queue AS (SELECT min(grabbed) AS first, max(finished) - min(grabbed) AS drain FROM compute.jobs GROUP BY queue)
		SELECT format('drain: queues=%s jobs=%s procs=%s concurrency=%s jobs/s=%s complete=%s max_attempt=%s latest_first_claim=%ss longest_queue_drain=%ss',
			$nq, count(*), $procs, $conc,
			round(count(*) / extract(epoch FROM max(finished) - min(grabbed))),
			count(*) FILTER (WHERE status = 'complete'), max(attempt),
			(SELECT round(extract(epoch FROM max(first) - min(first))::numeric, 2) FROM per_queue),
			(SELECT round(extract(epoch FROM max(drain))::numeric, 2) FROM per_queue))
		FROM compute.jobs"
	;;
*)
	echo "usage: $0 idle|drain ..." >&2
	exit 2
	;;
esac
