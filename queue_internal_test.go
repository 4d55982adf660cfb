package compute

import (
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestDirectURLOfSeveralHostsAsksForWrites: WithDirectURL follows Open's
// rule for several hosts without target_session_attrs: it asks for a
// server that takes writes, since LISTEN and Migrate fail on a standby
// (after a failover, the old primary may come back as one, first in the
// list). One host, or an explicit setting, is left as it is.
func TestDirectURLOfSeveralHostsAsksForWrites(t *testing.T) {
	readWrite := reflect.ValueOf(pgconn.ValidateConnectTargetSessionAttrsReadWrite).Pointer()
	primary := reflect.ValueOf(pgconn.ValidateConnectTargetSessionAttrsPrimary).Pointer()
	for _, tc := range []struct {
		url  string
		want uintptr // 0: no check
	}{
		{"postgres://u@a:5432,b:5432/db?sslmode=disable", readWrite},
		{"host=a,b port=5432,5433 dbname=db sslmode=disable", readWrite},
		{"postgres://u@a:5432,b:5432/db?sslmode=disable&target_session_attrs=primary", primary},
		{"postgres://u@a:5432/db?sslmode=disable", 0},
		{"postgres://u@a:5432/db?sslmode=prefer", 0}, // one server, tried with and without TLS
	} {
		o, err := buildOptions([]Option{WithDirectURL(tc.url)})
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		got := uintptr(0)
		if o.direct.ValidateConnect != nil {
			got = reflect.ValueOf(o.direct.ValidateConnect).Pointer()
		}
		if got != tc.want {
			t.Errorf("%s: the direct URL's connect check is %#x, want %#x (read-write %#x)", tc.url, got, tc.want, readWrite)
		}
	}
}
