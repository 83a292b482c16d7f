package main

import (
	"strings"
	"testing"
)

// A trimmed govulncheck -format json stream: a called standard-library
// vulnerability, a called one in a module, and one only imported.
const stream = `{"config":{"protocol_version":"v1.0.0","scanner_name":"govulncheck","scanner_version":"v1.9.0","db":"file:///db","go_version":"go1.26.8","scan_level":"symbol"}}
{"progress":{"message":"Scanning your code"}}
{"osv":{"id":"GO-1","summary":"stdlib bug"}}
{"osv":{"id":"GO-2","summary":"module bug"}}
{"osv":{"id":"GO-3","summary":"imported only"}}
{"finding":{"osv":"GO-1","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8"}]}}
{"finding":{"osv":"GO-1","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Write","receiver":"*conn"},{"module":"example.com/m","package":"example.com/m","function":"ServeHTTP","receiver":"*Handler","position":{"filename":"h.go","line":7}}]}}
{"osv":{"id":"GO-4","summary":"stdlib, later fix"}}
{"finding":{"osv":"GO-4","fixed_version":"v1.26.10","trace":[{"module":"stdlib","version":"v1.26.8","package":"crypto/x509","function":"Verify"},{"module":"example.com/m","package":"example.com/m","function":"main"}]}}
{"finding":{"osv":"GO-2","fixed_version":"v1.20.2","trace":[{"module":"example.com/dep","version":"v1.20.1","package":"example.com/dep/z","function":"Decode"},{"module":"example.com/m","package":"example.com/m","function":"main"}]}}
{"finding":{"osv":"GO-3","fixed_version":"v0.2.0","trace":[{"module":"example.com/other","version":"v0.1.0","package":"example.com/other/p"}]}}
`

func TestVerdict(t *testing.T) {
	r, err := read(strings.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.vulns["GO-1"]; got.level != called || got.example != "net/http.conn.Write reached from example.com/m.Handler.ServeHTTP (h.go:7)" {
		t.Fatalf("GO-1 = %+v", got)
	}
	var out strings.Builder
	if r.report(&out, ".", false) {
		t.Fatalf("a called vulnerability in a required module passed:\n%s", out.String())
	}
	for _, want := range []string{"GO-2 example.com/dep@v1.20.1, fixed in v1.20.2", "build with go1.26.10 or later", "1 more in code"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}

	delete(r.vulns, "GO-2")
	if !r.report(&strings.Builder{}, ".", false) {
		t.Error("called standard-library vulnerabilities failed without -stdlib fail")
	}
	if r.report(&strings.Builder{}, ".", true) {
		t.Error("called standard-library vulnerabilities passed with -stdlib fail")
	}
	delete(r.vulns, "GO-1")
	delete(r.vulns, "GO-4")
	if !r.report(&strings.Builder{}, ".", true) {
		t.Error("an imported-only vulnerability failed")
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"v1.26.9", "v1.26.10", true},
		{"v1.26.10", "v1.26.9", false},
		{"v1.26", "v1.26.1", true},
		{"v0.58.1-0.20261009181718-2f1f834330b2", "v0.58.2", true},
	} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%s, %s) = %v", c.a, c.b, got)
		}
	}
}
