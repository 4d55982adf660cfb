// Package shop is a small program that uses compute the way an application
// would, and tests itself with computetest from outside compute's module:
// its module path is its own, so it can use only what compute exports.
package shop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/computeplatform/compute"
)

// Welcome is the config of an "emails" job.
type Welcome struct {
	To       string `json:"to"`
	Template string `json:"template"`
}

// SignUp records a customer and enqueues their welcome email in the same
// transaction, so the email exists only if the customer does.
func SignUp(ctx context.Context, q *compute.Queue, tx pgx.Tx, email string) error {
	if _, err := tx.Exec(ctx, `INSERT INTO customers (email) VALUES ($1)`, email); err != nil {
		return fmt.Errorf("recording customer %q: %w", email, err)
	}
	config, err := json.Marshal(Welcome{To: email, Template: "welcome"})
	if err != nil {
		return err
	}
	_, err = q.EnqueueTx(ctx, tx, compute.Job{
		Queue:  "emails",
		Config: string(config),
		Unique: compute.Unique{Key: "welcome:" + email},
	})
	return err
}

// ErrBounced is what the mailer says about an address that does not exist.
var ErrBounced = errors.New("address bounced")

// Mailer sends one email.
type Mailer func(ctx context.Context, to, template string) error

// SendEmail returns the handler of the "emails" queue: a config that cannot
// be read, or a bounced address, fails the job for good; other errors are
// retried.
func SendEmail(send Mailer) compute.Handler {
	return func(ctx context.Context, job *compute.Job) ([]string, error) {
		var w Welcome
		if err := json.Unmarshal([]byte(job.Config), &w); err != nil {
			return nil, compute.Permanent(fmt.Errorf("reading the job's config: %w", err))
		}
		err := send(ctx, w.To, w.Template)
		if errors.Is(err, ErrBounced) {
			return nil, compute.Permanent(err)
		}
		return nil, err
	}
}
