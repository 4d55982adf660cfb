// Package compute is a job queue that keeps its state in PostgreSQL.
// Programs enqueue jobs into named queues; workers in any number of
// processes, on any number of hosts, claim and run them. The database is
// the only thing they share: there is no broker and no leader.
//
// Everything lives in the schema compute: the table compute.jobs (one row
// per job), the key/value table compute.meta, the queue settings, the job
// journal, the worker registry and goose's version table.
// The first version of compute.jobs is a documented contract that other
// programs read and write with plain SQL; later columns all have defaults,
// so a job inserted with only those columns still runs.
//
// # Enqueue
//
// Open connects (a postgres:// URL, key=value pairs, or "" for the PG*
// environment variables) and, with [WithMigrate], brings the schema up to
// date. One Queue per process, shared by all goroutines:
//
//	q, err := compute.Open(ctx, os.Getenv("DATABASE_URL"), compute.WithMigrate())
//	if err != nil { ... }
//	defer q.Close()
//	id, err := q.Enqueue(ctx, compute.Job{
//		Queue:      "thumbnails",
//		Config:     `{"width": 256}`,
//		InputFiles: []string{"cat.png"},
//	})
//
// A job names its queue, carries a config (usually JSON, 1 MiB at most by
// default) and the names of the files it reads. Priority (smaller runs
// first), RunAt or Delay, and MaxAttempts (default 25) are optional.
// EnqueueMany submits thousands of jobs in one statement, all or none.
// Get reads a job, List pages through a queue, Counts totals the jobs per
// queue and status.
//
// # Work
//
// A Worker runs a Handler for each queue it serves, with bounded
// concurrency:
//
//	w, err := compute.NewWorker(q, compute.WorkerConfig{
//		Queues: map[string]compute.QueueConfig{
//			"thumbnails": {Handler: makeThumbnail, Concurrency: 8},
//		},
//	})
//	err = w.Run(ctx) // blocks until ctx ends or Shutdown is called
//
// A handler returns the job's output files, or an error. A plain error
// fails the attempt, and the job runs again after a Backoff while it has
// attempts left; Permanent(err) fails the job now; Snooze(d) runs it again
// after d without spending an attempt ([Job.Spent] counts the attempts
// spent; [Job.Attempt] counts every claim). A panic fails the attempt, with
// its stack. The handler's context ends when the job is cancelled, times out
// ([QueueConfig.Timeout]), loses its lease, or the worker stops past its
// grace period; handlers should return soon after.
//
// The worker claims jobs in batches, wakes on notifications and polls as
// well, renews the leases of running jobs, writes outcomes in batches, and
// hands back the jobs of workers that died ([Queue.RequeueStale]). A program
// that wants its own loop uses the same primitives: Claim, Heartbeat,
// Complete and Fail.
//
// # Transactions
//
// EnqueueTx enqueues inside the caller's transaction: the job exists only
// if the transaction commits, so it never refers to data that was rolled
// back, and no worker sees it before the commit.
//
//	tx, err := q.Pool().Begin(ctx)
//	if err != nil { ... }
//	defer tx.Rollback(ctx)
//	// ... the application's own writes, in tx ...
//	id, err := q.EnqueueTx(ctx, tx, job)
//	if err != nil { ... }
//	err = tx.Commit(ctx)
//
// # Shutdown
//
// [Worker.Shutdown] works like http.Server.Shutdown: the worker stops
// claiming, running jobs may finish until Shutdown's context ends, then
// their contexts are cancelled and their jobs go back to the queue
// without spending an attempt. Ending Run's context does the same, with
// [WorkerConfig.StopTimeout] (30 s by default) as the grace period. Either
// way every outcome is written before Run returns. Stop workers before
// closing their Queue.
//
// # Migrations
//
// The schema is versioned with goose migrations embedded in the library
// (package migrations). Migrate, or Open with [WithMigrate], applies those
// missing. Any number of processes may do so at once: an advisory lock of
// the library's own lets one migrate while the others wait and then find
// nothing to do. goose's version table is compute.goose_db_version, so the
// host application's own goose migrations are unaffected. MigrateTo moves
// to a given version; version 0 drops the schema, jobs included. Calls on
// a database that was never migrated return [ErrNotMigrated].
//
// # Operations
//
// Connection poolers: see the next section.
//
// Permissions: the first Migrate needs a role with CREATE on the database
// (it creates schema compute, which that role then owns; later migrations
// must run as that owner). A role that only runs jobs needs USAGE on schema
// compute and SELECT, INSERT, UPDATE, DELETE on all its tables (granted
// again after a migration that adds one).
//
// Pool size: Open's pool has pgx's default size, max(4, CPUs), unless the
// connection string sets pool_max_conns. A Worker's fetch loops, completer,
// heartbeat and rescue share it with handlers that use the database; at
// high throughput give it more (the bench module uses 10).
//
// Wake-ups: an enqueue wakes workers with a notification, but a Queue's
// enqueues into one queue notify about once per cooldown
// ([WithNotifyCooldown], default 2 ms). The first enqueue of a period
// notifies at its commit; later ones stay silent, and one notification at
// the period's end covers them (and one more 100 ms after a silent
// EnqueueTx, for a transaction still open at the period's end). The reason:
// every notifying commit waits for a lock that all others of the server
// hold across their WAL flush, so a notification per enqueue caps
// concurrent enqueues (1,660-2,230 a second against 5,450 with the
// cooldown, 32 connections on a 2-core machine with fsync on). Statements that change job statuses notify the journal's
// listeners too, but only while some process runs Wait or Follow.
// SetMeta(ctx, MetaNotify, "off") turns all of them off; workers then find
// jobs by polling ([WorkerConfig.PollInterval]), and Wait and Follow check
// every 5 s.
//
// Long transactions: a session that keeps a transaction (or a snapshot)
// open holds back vacuum, and every claim then steps over the dead index
// entries of all jobs claimed since: under load, one idle REPEATABLE READ
// session slowed claims threefold within 10 seconds and tenfold within a
// minute. The journal also waits for it. Workers look once a minute
// ([Queue.OldestHorizon]) and log a warning naming the session after
// [WorkerConfig.LongTransactionWarning] (1 minute). Set
// idle_in_transaction_session_timeout for application roles, run dumps and
// long reports on a replica, and watch replication slots. Migration 5 makes
// autovacuum of compute.jobs unthrottled and more frequent.
//
// Metrics, traces and health: [WithObserver] sets an [Observer], functions
// the Queue and its Workers call inline as they enqueue, claim, run and
// finish attempts, write outcomes, renew leases, rescue jobs and lose or
// regain their listener; its trace hooks store the enqueuer's trace
// context with each job ([Job.TraceContext]) and wrap each attempt's
// handler context (the module
// github.com/computeplatform/compute/otelcompute turns them into
// OpenTelemetry metrics and spans, so this package never links
// OpenTelemetry). [Worker.Health] says whether a worker is live (no
// handler stuck past its Timeout) and ready (running, its last statement
// succeeded within a lease, and its claims and outcome writes are not
// failing for as long); [Worker.HealthHandler] serves it to /healthz and
// /readyz probes.
//
// # Connection poolers
//
// A pooler in session mode is a direct connection as far as the library
// is concerned. In transaction mode (PgBouncer's pool_mode=transaction,
// or statement) each transaction may run on another server connection,
// and what a session keeps is lost between them. Open and New find this
// out with a probe: a statement prepared and run on two connections (on a
// direct TCP connection, which the server sees as itself, only one), and
// then:
//
//   - Prepared statements: pgx prepares each statement once per
//     connection, which PgBouncer before 1.21 (or without
//     max_prepared_statements) loses. Open then makes its pool again with
//     default_query_exec_mode=exec, which needs no prepared statement,
//     and logs it; New never changes the caller's pool and fails with
//     [ErrTransactionPooler], naming the fix (default_query_exec_mode=exec,
//     or PgBouncer 1.21+ with max_prepared_statements). Putting
//     default_query_exec_mode=exec in the connection string skips Open's
//     reconnect. A statement that still meets a lost prepared statement
//     fails with [ErrTransactionPooler] and the same fix.
//   - Everything that lives in one transaction works: enqueues, unique
//     jobs (their advisory locks are transaction locks), claims (the gated
//     claim's lock is a transaction lock too), Complete, Fail, Heartbeat,
//     the worker, Wait and Follow, retention.
//   - LISTEN needs a session: through the pooler it would stay on a
//     server connection that then serves other clients, who would get the
//     notifications. Workers then do not LISTEN and find jobs by polling
//     ([WorkerConfig.PollInterval]); the Observer's Listening and
//     [Health].Listening say false, and one warning is logged. Wait and
//     Follow check every 5 s instead of being woken.
//   - Migrate's advisory lock is held by a session across the migrations'
//     transactions, so Migrate (and [WithMigrate]) fails with
//     [ErrTransactionPooler].
//
// [WithDirectURL] gives the library a direct connection string for these
// sessions, while the pool goes through the pooler: workers and Wait and
// Follow listen on it, and Migrate locks and migrates on it. Migrate
// probes it first, and fails if it goes through a pooler in transaction
// mode too.
//
//	q, err := compute.Open(ctx, pgbouncerURL,
//		compute.WithDirectURL(directURL), compute.WithMigrate())
//
// The probe relies on PgBouncer's default reuse of the server connection
// released last: on a pooler busy with other clients' traffic it may miss
// it. A listener then still finds out, within 5 s of connecting: its
// first probe is sent from the pool, and a pooler in transaction mode
// never hands it back to the listening connection; it warns and polls.
// Migrate checks that its lock was released by the server session that
// took it, and otherwise fails with [ErrTransactionPooler]: the
// migrations then ran without the lock's protection, and the lock stays
// with that session until the pooler closes it.
//
// # Semantics
//
// Execution is at least once: a job runs until one attempt is recorded as
// its outcome, whatever dies on the way, so a handler may run more than
// once for the same job and should be safe to repeat. A claim leases the
// job to one worker ([WithLease], 30 s by default, renewed while it runs);
// a job whose lease runs out goes back to the queue, or fails once its
// attempts are spent. Exactly one outcome wins: Complete, Fail and
// Heartbeat only write while (job, attempt, worker) still match the
// claim, and a holder that lost its job gets a *LeaseLostError instead.
//
// All times (created, run_at, leases, retention) come from the database's
// clock, never from a worker's; an enqueue's (created, and run_at after a
// Delay) are when its statement ran, even inside a longer transaction.
//
// Job ids are UUIDv7 by default. With [Job.ContentID] the id is derived from
// the queue, config and input files (in the order given), so enqueuing the
// same job again returns the existing job's id and creates nothing,
// whatever its status.
//
// Cancel is a failure with a reason: a queued job never runs, and a
// running one ends failed at once; its handler's context is cancelled and
// its result discarded. Retry queues a failed job again.
//
// # Unique jobs
//
// [Job.Unique] skips a job that duplicates an earlier one with the same key
// in the same queue, within a scope: UniqueWhileActive (queued or running,
// the default), UniqueWhileQueued, or UniqueWithinWindow (created within
// Unique.Window, any status). Submit and SubmitTx report per job whether it
// was a duplicate and give the existing job's id; Enqueue returns that id.
// Concurrent submitters in any number of processes create one job between
// them, also in batches: each key is locked (a transaction advisory lock)
// until the submitting transaction ends, and the lookup runs after the lock,
// so it needs READ COMMITTED, the default (SubmitTx refuses other levels).
// The locks are per bucket of keys: a transaction holds at most 1,024 of
// them, whatever it submits, but until it ends it also holds up submitters
// of other keys in its buckets (a batch of thousands of keys holds nearly
// all of them), so keep transactions with unique jobs short.
// The library's own transactions (Submit, the gated claim, the periodic
// scheduler) ask for READ COMMITTED whatever the database's or role's
// default_transaction_isolation says.
//
// # Queue rules: pause, limits, fairness
//
// Rules live in compute.queues and bind every worker in the cluster.
// Pause stops new starts of a queue (running jobs finish); Resume wakes the
// workers at once. SetQueueSettings sets:
//
//   - MaxRunning: running jobs of the queue across all workers.
//   - KeyMaxRunning: running jobs per [Job.PartitionKey] (a tenant,
//     customer or account), e.g. at most 3 per customer.
//   - RateLimit and KeyRateLimit per RatePeriod: job starts in any sliding
//     window of that length, for the queue and per key.
//   - Fair: claims go round-robin across partition keys, so a tenant with a
//     million queued jobs does not starve one with ten.
//   - AgeAfter: jobs that wait longer move up one priority step per period,
//     so low-priority work runs eventually.
//
// A queue without rules takes the fast claim (one statement, no lock). A
// queue with rules is claimed under a per-queue advisory lock, one claim at
// a time across the cluster, which keeps its counts exact; such claims cost
// a few milliseconds more, so give rules only to queues that need them.
// Within a key, jobs go in priority order; across keys, in turn.
//
// # Periodic jobs
//
// [WorkerConfig.Periodic] lists jobs to enqueue on a cron schedule
// ("*/5 * * * *", @hourly, with an optional CRON_TZ= prefix) or at a plain
// interval (Every, aligned to the Unix epoch). Every process may list the
// same schedules: a tick's job id is derived from the schedule's name and
// the tick, so each tick is enqueued once, whichever processes start, stop
// or restart around it. The job's RunAt is its tick. CatchUp enqueues up to
// that many ticks that were missed while no worker ran (or while a worker
// was suspended); it is off by default. When a CRON_TZ zone's clock changes,
// a fixed-time schedule ticks once, as the cron daemons do (see
// PeriodicJob).
//
// # Retention
//
// A worker's maintenance round (every [WorkerConfig.MaintenanceInterval]) applies
// [WorkerConfig.Retention]: complete and failed jobs that nobody read (Get)
// for ExpireAfter (7 days) become expired; expired ones are deleted once
// their last read is DeleteExpiredAfter (14 days) ago; optionally complete
// or failed jobs are deleted directly (DeleteCompleteAfter,
// DeleteFailedAfter); journal events go after JournalAfter (7 days). It
// works in batches of 1,000 rows that skip locked rows. Expire and Purge do
// the same on demand.
//
// # Journal, waiting and following
//
// Every status change of every job, including changes made with plain SQL,
// appends an event to compute.events. Events reads the events after a
// Cursor; Follow calls a function with new events as they are written
// (woken by a notification), for dashboards and pipelines; Wait returns a
// job once it is finished. A cursor never skips an event whose transaction
// committed late: an event is only readable once every older transaction
// in the database has ended, so a long-running transaction delays the
// journal. SetMeta(ctx, MetaJournal, "off") turns the journal off for the
// highest claim rates (it cost about 5% of the bench's burn-down).
// Events follow the order of their transactions' first writes,
// which is commit order for the library's own one-statement changes (see
// Events for the exception). Store the last Cursor to resume.
//
// Cursors are transaction ids, meaningful in the cluster that assigned
// them. pg_upgrade and physical replicas keep the cluster's counter: the
// journal and saved cursors survive them. A copy made with pg_dump and
// pg_restore, or a switchover to a logical replica, starts a new counter;
// when it is behind the copied events, Events, Head and Follow fail with
// [ErrJournalFromAnotherCluster]. Call RebaseJournal once, right after the
// copy, and start readers again from the zero Cursor or from Head.
//
// # Failover
//
// Give every process all servers of a streaming pair in one connection
// string, "postgres://a:5432,b:5432/db?target_session_attrs=read-write"
// or "host=a,b": Open then connects only to a server that accepts writes
// (it asks for that itself when target_session_attrs is not set, for
// [WithDirectURL]'s string as well; one that allows a standby, read-only,
// standby or prefer-standby, fails with [ErrInvalidOption]; New, which
// never changes the caller's pool, refuses one of several hosts without
// target_session_attrs). When
// the primary stops and the standby is promoted, the workers' pools,
// their listeners and the journal's listener reconnect on their own
// (statements fail meanwhile with [ErrUnavailable], and the Worker retries
// them; a write that reaches a standby not yet promoted, error 25006,
// counts as unavailable too). A listener that reconnects wakes every
// queue, so jobs are picked up at once, not at the next poll.
//
// With synchronous replication (synchronous_standby_names naming the
// standby, synchronous_commit on) nothing acknowledged is lost: an
// enqueue, claim or outcome whose reply did not arrive is retried on the
// new primary (jobs with a ContentID or a Unique key are not made twice),
// and each job completes once. Make sure the promoted server does not
// itself list a synchronous standby it no longer has, or its commits wait
// for ever.
//
// With asynchronous replication the new primary lacks the transactions the
// old one had not yet sent, and the library cannot know which:
//   - acknowledged enqueues are gone: keep the source of truth and submit
//     again with ContentID or Unique (duplicates are skipped);
//   - acknowledged completions and failures are gone: the job is back in
//     progress (its lease expires and it runs again) or queued (it runs
//     again at once, possibly with the same attempt number; a worker that
//     claims a job it still runs drops the older run, and the fence keeps
//     a stale result out), so handlers must tolerate running twice, which
//     at-least-once asks of them anyway;
//   - journal events a reader has seen may be gone, and the new primary
//     assigns their transaction ids again: Follow and Events fail with
//     [ErrJournalFromAnotherCluster] while the cursor is ahead of the new
//     primary, and a reader that comes back after that skips the events
//     written since under those ids. Start readers again from Head and
//     reconcile with Get or List.
//
// A server running with synchronous_commit off (for the whole server, or
// for the role the library connects as) acknowledges commits before they
// are on disk, and when it crashes it loses those of its last moments (up
// to three times wal_writer_delay) as a promotion of an asynchronous
// standby does, with the same consequences. The guarantees above assume
// synchronous_commit on for the library's connections.
//
// A test in internal/faulttest measures both (COMPUTE_FAILOVER_ASYNC=1 for
// the asynchronous one): with 0.7 s of replication lag, every enqueue and
// completion acknowledged in that window was lost.
//
// # Why isn't my job running?
//
// Explain answers in words, with a ReasonKind per cause: the job is
// scheduled later, its queue is paused, it is held by a concurrency cap or
// a rate limit, N jobs are ahead of it, no worker serving its queue has been
// seen in the last minute (workers register themselves in compute.workers),
// or its lease is held by a worker that stopped renewing it.
//
// # [Errors]
//
// [Errors] wrap sentinels to test with errors.Is: [ErrInvalid] for any bad
// input (and the more specific [ErrInvalidQueue], [ErrInvalidConfig],
// [ErrConfigTooLarge], [ErrInvalidFiles], [ErrInvalidJob], [ErrInvalidMeta],
// [ErrInvalidOption]), after which nothing was written; [ErrNotFound];
// [ErrWrongStatus] (cancelling a finished job, retrying one that did not
// fail); [ErrLeaseLost]; [ErrUnavailable] (the database cannot be reached:
// retry later); [ErrNotMigrated]; [ErrClosed]; [ErrJournalFromAnotherCluster]
// (the journal was copied from another cluster); [ErrBadRow], for a row
// written outside the library that it cannot read; [ErrPermanent], for
// errors made with Permanent. Any other error (a server error the library
// does not expect) matches none of them and keeps its cause. No error or
// log line holds the connection's password.
package compute
