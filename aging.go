package compute

import "context"

// dueForAgingSQL takes this period's aging turn for every queue that is due, so
// one process in the cluster ages each queue once per AgeAfter.
const dueForAgingSQL = `
UPDATE compute.queues SET aged_at = now()
WHERE age_after IS NOT NULL AND aged_at <= now() - age_after
RETURNING name, (extract(epoch FROM age_after) * 1e6)::bigint`

// ageJobsSQL moves queued jobs of queue $1 that have been runnable for longer
// than $2 microseconds one priority step towards 0: the oldest 10,000 per
// turn, so one statement never locks a whole backlog.
const ageJobsSQL = noStatusChange + `
WITH old AS MATERIALIZED (
    SELECT ctid FROM compute.jobs
    WHERE status = 'queued' AND queue = $1 AND priority > 0 AND run_at <= now() - $2 * interval '1 microsecond'
    ORDER BY run_at
    LIMIT 10000
    FOR UPDATE SKIP LOCKED
)
UPDATE compute.jobs j SET priority = j.priority - 1 FROM old WHERE j.ctid = old.ctid`

// ageQueues applies priority aging ([QueueSettings.AgeAfter]) to the queues
// that are due, and returns how many jobs moved up.
func (q *Queue) ageQueues(ctx context.Context) (int, error) {
	type due struct {
		name string
		us   int64
	}
	var queues []due
	err := q.do(ctx, "compute: priority aging", func(ctx context.Context) error {
		queues = queues[:0]
		rows, err := q.pool.Query(ctx, dueForAgingSQL)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.name, &d.us); err != nil {
				return err
			}
			queues = append(queues, d)
		}
		return rows.Err()
	})
	total := 0
	for _, d := range queues {
		if err != nil {
			break
		}
		err = q.do(ctx, "compute: priority aging", func(ctx context.Context) error {
			tag, err := q.pool.Exec(ctx, ageJobsSQL, d.name, d.us)
			total += int(tag.RowsAffected())
			return err
		})
	}
	return total, err
}
