// Package computetest helps a program test its own compute handlers and
// producers against a real PostgreSQL database, never a mock.
//
// # Testing your handlers
//
// NewQueue gives a test a Queue on a fresh, migrated database of its own,
// dropped when the test ends; tests that use it may run in parallel:
//
//	func TestSignupSendsWelcome(t *testing.T) {
//		t.Parallel()
//		q := computetest.NewQueue(t)
//
//		signup(t.Context(), q, "ada@example.com") // the code under test enqueues
//
//		computetest.RequireEnqueued(t, q, computetest.Match{
//			Queue:  "emails",
//			Config: `{"to": "ada@example.com"}`, // a JSON subset of the config
//		})
//		out := computetest.WorkOne(t, q, "emails", sendEmail)
//		if out.Result != computetest.Complete {
//			t.Fatalf("sendEmail: %s: %v", out.Result, out.Err)
//		}
//	}
//
// RequireEnqueued and RequireNotEnqueued look for jobs by queue, by a JSON
// value the config must contain (jsonb containment, @>), by partition key,
// unique key and status; their Tx variants look inside the caller's
// transaction, before it commits. They fail the test with the jobs they
// found instead.
//
// WorkOne claims one job of a queue with the library's Claim and runs a
// handler on it the way a Worker does (middleware, timeout, lease renewal,
// a panic as the attempt's error, then Complete or Fail), and returns the
// Outcome: what became of the attempt and the job as stored afterwards.
// Drain runs a real Worker on the named queues until nothing in them is
// running or due, and counts what the attempts came to.
//
// # The database server
//
// The server is found or started once per test binary, on first use:
// DATABASE_URL when set (a server that allows CREATE DATABASE), else a
// throwaway server from the local PostgreSQL binaries (initdb, pg_ctl,
// postgres) on a free port, running as a child of the test process. On
// Linux that needs no TestMain: the server stops when the test process
// exits, and its temporary directory is removed by a later run. Where the
// server must come from Docker, or from local binaries outside Linux, it
// would outlive the test process, so Run must stop it:
//
//	func TestMain(m *testing.M) { os.Exit(computetest.Run(m)) }
//
// With Run, the server also stops at once at the end of the run and on
// Ctrl-C. Without any PostgreSQL the tests are skipped, or fail when the
// environment variable CI is "true".
package computetest
