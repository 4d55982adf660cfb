package compute

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Limits the schema and the library put on values.
const (
	maxQueueLen      = 32      // compute.jobs.queue is VARCHAR(32)
	maxMetaKeyLen    = 32      // compute.meta.key is VARCHAR(32) ...
	minMetaKeyLen    = 3       // ... with length(key) > 2
	maxMetaValueLen  = 256     // compute.meta.value is VARCHAR(256)
	maxErrorLen      = 16384   // bytes of one attempt's error kept on the job
	maxMaxAttempts   = 1000    // keeps the errors array of a job bounded
	defaultMaxConfig = 1 << 20 // default WithMaxConfigSize
	maxKeyLen        = 256     // partition and unique keys, in bytes
	maxWorkerIDLen   = 256     // WithWorkerID, in bytes: it is on every claimed job
)

// validQueue checks a queue name: 1 to 32 of a-z A-Z 0-9 _ - . with a
// letter or digit first, so names are safe in logs, URLs and file names.
func validQueue(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty; use 1 to %d characters from a-z, A-Z, 0-9, '_', '-', '.'", ErrInvalidQueue, maxQueueLen)
	}
	if len(name) > maxQueueLen {
		return fmt.Errorf("%w: %q is %d bytes long; use at most %d", ErrInvalidQueue, clip(name), len(name), maxQueueLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		letterOrDigit := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if letterOrDigit || i > 0 && (c == '_' || c == '-' || c == '.') {
			continue
		}
		return fmt.Errorf("%w: %q has %q at byte %d; use a-z, A-Z, 0-9, '_', '-', '.', starting with a letter or digit", ErrInvalidQueue, clip(name), c, i)
	}
	return nil
}

// validText checks that s can be stored in a Postgres text column: valid
// UTF-8 with no NUL byte (Postgres rejects both). what names the value.
func validText(s, what string, kind error) error {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return fmt.Errorf("%w: %s has a NUL byte at offset %d; Postgres text cannot hold NUL: encode binary data (base64) first", kind, what, i)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8; encode binary data (base64) first", kind, what)
	}
	return nil
}

// validWorkerID checks a [WithWorkerID] id: every claim writes it into a
// text column, so one Postgres rejects would make every claim fail.
func validWorkerID(id string) error {
	if len(id) > maxWorkerIDLen {
		return fmt.Errorf("%w: WithWorkerID(%q) is %d bytes long; use at most %d", ErrInvalidOption, clip(id), len(id), maxWorkerIDLen)
	}
	return validText(id, "WithWorkerID's id", ErrInvalidOption)
}

// validFiles checks a list of file names: each non-empty, storable as text,
// none twice.
func validFiles(files []string, what string) error {
	if len(files) == 0 {
		return nil // the common case, on every job a handler finishes
	}
	return checkFiles(files, what)
}

// checkFiles is validFiles for a non-empty list. It is a function of its own
// so that the common empty case does not pay for this one's stack frame.
func checkFiles(files []string, what string) error {
	seen := make(map[string]struct{}, len(files))
	for i, f := range files {
		if f == "" {
			return fmt.Errorf("%w: %s[%d] is empty; every file needs a name", ErrInvalidFiles, what, i)
		}
		if err := validText(f, fmt.Sprintf("%s[%d]", what, i), ErrInvalidFiles); err != nil {
			return err
		}
		if _, dup := seen[f]; dup {
			return fmt.Errorf("%w: %s names %q twice; list each file once", ErrInvalidFiles, what, clip(f))
		}
		seen[f] = struct{}{}
	}
	return nil
}

// validJob checks everything about a job to enqueue before the database sees
// it.
func validJob(j *Job, maxConfig int) error {
	if err := validQueue(j.Queue); err != nil {
		return err
	}
	if len(j.Config) > maxConfig {
		return fmt.Errorf("%w: %d bytes, the limit is %d; store large data elsewhere and pass a reference, or raise WithMaxConfigSize", ErrConfigTooLarge, len(j.Config), maxConfig)
	}
	if err := validText(j.Config, "config", ErrInvalidConfig); err != nil {
		return err
	}
	if err := validFiles(j.InputFiles, "input files"); err != nil {
		return err
	}
	if j.Priority < math.MinInt16 || j.Priority > math.MaxInt16 {
		return fmt.Errorf("%w: priority %d is outside %d..%d", ErrInvalidJob, j.Priority, math.MinInt16, math.MaxInt16)
	}
	if j.MaxAttempts < 0 || j.MaxAttempts > maxMaxAttempts {
		return fmt.Errorf("%w: max attempts %d is outside 1..%d (0 means %d)", ErrInvalidJob, j.MaxAttempts, maxMaxAttempts, DefaultMaxAttempts)
	}
	if j.Delay < 0 {
		return fmt.Errorf("%w: delay %s is negative", ErrInvalidJob, j.Delay)
	}
	if !j.RunAt.IsZero() && j.Delay != 0 {
		return fmt.Errorf("%w: both RunAt and Delay are set; set one", ErrInvalidJob)
	}
	if err := validKey(j.PartitionKey, "partition key"); err != nil {
		return err
	}
	return validUnique(j)
}

// validKey checks a partition or unique key: storable text of at most
// maxKeyLen bytes.
func validKey(key, what string) error {
	if len(key) > maxKeyLen {
		return fmt.Errorf("%w: %s is %d bytes long; use at most %d", ErrInvalidJob, what, len(key), maxKeyLen)
	}
	return validText(key, what, ErrInvalidJob)
}

// validUnique checks a job's uniqueness request.
func validUnique(j *Job) error {
	u := j.Unique
	if u.Key == "" {
		if u != (Unique{}) {
			return fmt.Errorf("%w: Unique has a scope or window but no Key; set Key, or leave Unique empty", ErrInvalidJob)
		}
		return nil
	}
	if err := validKey(u.Key, "unique key"); err != nil {
		return err
	}
	if j.ContentID {
		return fmt.Errorf("%w: both ContentID and Unique are set; use one way to avoid duplicates", ErrInvalidJob)
	}
	switch u.Scope {
	case UniqueWhileActive, UniqueWhileQueued:
		if u.Window != 0 {
			return fmt.Errorf("%w: Unique.Window is set but the scope is not UniqueWithinWindow", ErrInvalidJob)
		}
	case UniqueWithinWindow:
		if u.Window <= 0 {
			return fmt.Errorf("%w: UniqueWithinWindow needs a positive Unique.Window, got %s", ErrInvalidJob, u.Window)
		}
	default:
		return fmt.Errorf("%w: unknown unique scope %d; use UniqueWhileActive, UniqueWhileQueued or UniqueWithinWindow", ErrInvalidJob, u.Scope)
	}
	return nil
}

// validMeta checks a compute.meta key and value against the schema's limits.
// Lengths are in characters, as VARCHAR counts them.
func validMeta(key, value string) error {
	if err := validText(key, "key", ErrInvalidMeta); err != nil {
		return err
	}
	if n := utf8.RuneCountInString(key); n < minMetaKeyLen || n > maxMetaKeyLen {
		return fmt.Errorf("%w: key %q has %d characters; use %d to %d", ErrInvalidMeta, clip(key), n, minMetaKeyLen, maxMetaKeyLen)
	}
	if err := validText(value, "value", ErrInvalidMeta); err != nil {
		return err
	}
	if n := utf8.RuneCountInString(value); n > maxMetaValueLen {
		return fmt.Errorf("%w: value for %q has %d characters; use at most %d", ErrInvalidMeta, key, n, maxMetaValueLen)
	}
	return nil
}

// clip shortens a bad value for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return strings.ToValidUTF8(s[:64], "") + "..."
	}
	return s
}

// cleanError makes an attempt's error storable: valid UTF-8, no NUL, at most
// maxErrorLen bytes.
func cleanError(msg string) string {
	msg = strings.ToValidUTF8(strings.ReplaceAll(msg, "\x00", `\x00`), "\uFFFD")
	if len(msg) > maxErrorLen {
		msg = strings.ToValidUTF8(msg[:maxErrorLen], "") + " [truncated]"
	}
	return msg
}

// arrayLiteral encodes names as a Postgres array literal, {"a","b"}. Batched
// statements pass one literal per job in a text[] and cast each to
// varchar[], because a parameter cannot be a ragged two-dimensional array.
func arrayLiteral(names []string) string {
	if len(names) == 0 {
		return "{}" // most jobs name no file: no builder, no allocation
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := 0; j < len(n); j++ {
			if n[j] == '"' || n[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(n[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}
