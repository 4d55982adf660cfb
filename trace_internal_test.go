package compute

import "testing"

// BenchmarkDecodeTraceContext is what a claim spends per job that carries
// a W3C traceparent (scanJob's decodeTraceContext).
func BenchmarkDecodeTraceContext(b *testing.B) {
	raw := []byte(`{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`)
	b.ReportAllocs()
	for b.Loop() {
		if decodeTraceContext(raw) == nil {
			b.Fatal("no trace context")
		}
	}
}
