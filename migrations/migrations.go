// Package migrations holds the goose SQL migrations of the compute schema,
// embedded in the binary. Queue.Migrate runs them; users with their own
// migration tool can read the files from FS and apply them in order.
package migrations

import "embed"

// FS holds the numbered goose migrations (00001_compute_v1.sql, ...). A
// released file is never edited: changes come as new files.
//
//go:embed *.sql
var FS embed.FS
