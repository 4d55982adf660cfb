package compute

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// pinJoinsSQL precedes each fenced statement and each claim in its pipeline or
// transaction (see queryPinned, fenced and claimUpdate). The settings are local
// (set_config's third argument): they end with the pipeline's implicit
// transaction, and never outlive the call on the pooled connection. JIT is
// off too: the disabled plan types' penalty costs can lift a claim's
// estimate over jit_above_cost, and a keyed claim then spent about 30 ms
// compiling itself (seen with a rate-limit window of 100,000 starts).
const pinJoinsSQL = `SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), set_config('enable_material', 'off', true), set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)`

// pinnedPipeline is the pipeline queryPinned and the gated claim's lock send:
// pinJoinsSQL, then the statement.
func pinnedPipeline(sql string, args ...any) *pgx.Batch {
	batch := &pgx.Batch{}
	batch.Queue(pinJoinsSQL)
	batch.Queue(sql, args...)
	return batch
}

// queryPinned runs sql after pinJoinsSQL in one pipeline (one round trip) and
// collects its rows with scan.
func queryPinned[T any](ctx context.Context, q *Queue, sql string, args []any, scan pgx.RowToFunc[T]) ([]T, error) {
	results := q.pool.SendBatch(ctx, pinnedPipeline(sql, args...))
	_, err := results.Exec()
	var out []T
	if err == nil {
		var rows pgx.Rows
		if rows, err = results.Query(); err == nil {
			out, err = pgx.CollectRows(rows, scan)
		}
	}
	return out, errors.Join(err, results.Close())
}
