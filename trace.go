package compute

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxTraceContext caps a job's trace context, in bytes of its JSON
// encoding: a W3C traceparent is 55 bytes and a tracestate at most 512
// (32 members), so 1 KiB holds both with room, and the value stays inline
// in the row (see migration 14), so a claim reads it at no extra cost.
const maxTraceContext = 1024

// encodeTraceContext returns carrier as the JSON object stored in
// compute.jobs.trace_context, "" for an empty carrier (stored as NULL). A
// key or value that is not storable text, or an encoding larger than
// maxTraceContext, is a problem: the text says which.
func encodeTraceContext(carrier map[string]string) (string, string) {
	if len(carrier) == 0 {
		return "", ""
	}
	for k, v := range carrier {
		// jsonb refuses \u0000, and json.Marshal would replace invalid
		// UTF-8: both are refused, not stored altered.
		if !storable(k) || !storable(v) {
			return "", fmt.Sprintf("entry %q holds a NUL byte or invalid UTF-8", clip(k))
		}
	}
	b, err := json.Marshal(carrier)
	if err != nil {
		return "", err.Error()
	}
	if len(b) > maxTraceContext {
		return "", fmt.Sprintf("it is %d bytes as JSON, more than %d", len(b), maxTraceContext)
	}
	return string(b), ""
}

// validTraceContext checks a Job.TraceContext set by the caller and returns
// its encoding.
func validTraceContext(carrier map[string]string) (string, error) {
	enc, problem := encodeTraceContext(carrier)
	if problem != "" {
		return "", fmt.Errorf("%w: trace context: %s; carry only the propagator's headers (traceparent, tracestate)", ErrInvalidJob, problem)
	}
	return enc, nil
}

// decodeTraceContext reads compute.jobs.trace_context. It is a hint for
// tracing, never a reason to refuse a job: a NULL, or a value plain SQL
// wrote that is not a JSON object of strings, reads as no trace context.
func decodeTraceContext(raw []byte) map[string]string {
	if raw == nil {
		return nil
	}
	var carrier map[string]string
	if json.Unmarshal(raw, &carrier) != nil || len(carrier) == 0 {
		return nil
	}
	return carrier
}

// storable reports whether s can be stored in a jsonb string: valid UTF-8
// without NUL.
func storable(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }
