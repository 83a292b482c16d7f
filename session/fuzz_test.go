package session

import (
	"net/http"
	"strings"
	"testing"
)

func FuzzOpen(f *testing.F) {
	c, _ := NewCodec(secretA)
	sealed := c.Seal("cookie", []byte(`{"c":{"sub":"u"},"t":1}`))
	for _, s := range []string{sealed, sealed[:len(sealed)/2], "", "AQ", "3.abc", strings.Repeat("A", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		pt, _, err := c.Open("cookie", v)
		if err == nil && v != sealed {
			// Only values this codec sealed may open.
			if _, _, err2 := c.Open("other-purpose", v); err2 == nil {
				t.Fatalf("a value opened under two purposes: %q", v)
			}
		}
		if err == nil {
			_, _ = Unmarshal(pt) // must not panic
		}
	})
}

func FuzzReadChunked(f *testing.F) {
	for _, s := range []string{"s=abc", "s=2.ab; s_1=cd", "s=9.x", "s=2.a", "s=-1.a; s_1=b", "s=; s_1=x", "s=1000000.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		r := &http.Request{Header: http.Header{"Cookie": {header}}}
		v, ok := ReadChunked(r, "s")
		if ok && len(v) > len(header) {
			t.Fatalf("reassembled %d bytes from a %d-byte header", len(v), len(header))
		}
	})
}
