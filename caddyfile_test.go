package caddyoidc

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func adapt(t *testing.T, src string) ([]byte, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	return out, err
}

// TestGoldenAdapt keeps Caddyfile.example and the parser in step: every
// snippet a user copies adapts to the JSON in testdata.
func TestGoldenAdapt(t *testing.T) {
	files := []string{"Caddyfile.example"}
	extra, _ := filepath.Glob("testdata/*.caddyfile")
	files = append(files, extra...)
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			out, err := adapt(t, string(src))
			if err != nil {
				t.Fatalf("adapting %s: %v", f, err)
			}
			var pretty bytes.Buffer
			_ = json.Indent(&pretty, out, "", "\t")
			golden := filepath.Join("testdata", strings.TrimSuffix(filepath.Base(f), ".caddyfile")+".json")
			if *update {
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGoldenAdapt -update)", err)
			}
			if !bytes.Equal(bytes.TrimSpace(pretty.Bytes()), bytes.TrimSpace(want)) {
				t.Errorf("%s adapts to:\n%s\nwant (%s):\n%s", f, pretty.String(), golden, want)
			}
		})
	}
}

func TestCaddyfileErrors(t *testing.T) {
	for name, tc := range map[string]struct{ src, want string }{
		"unknown subdirective": {"oidc {\n issuer https://idp\n colour blue\n}", `unrecognized subdirective "colour"`},
		"header needs two":     {"oidc {\n header X-A\n}", "header takes a name and a value"},
		"bad duration":         {"oidc {\n session_lifetime soon\n}", "session_lifetime"},
		"two issuers":          {"oidc {\n issuer a b\n}", "issuer takes exactly one value"},
		"missing value":        {"oidc {\n client_id\n}", "wrong argument count"},
		"inline argument":      {"oidc https://idp", "wrong argument count"},
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestCaddyfileAllFields: every subdirective lands in a JSON field of the
// same name (grouped: client, login, session, allow, logout, bearer), and
// every JSON field of the handler has a subdirective, so the flat Caddyfile
// and the grouped JSON config cannot drift apart.
func TestCaddyfileAllFields(t *testing.T) {
	src, err := os.ReadFile("testdata/every-subdirective.caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	block := string(src[strings.Index(string(src), "oidc {"):])
	block = block[:strings.Index(block, "\n\t}")+3]
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(block)); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(h)
	var cfg map[string]any
	_ = json.Unmarshal(raw, &cfg)
	keys := map[string]bool{}
	var walk func(m map[string]any)
	walk = func(m map[string]any) {
		for k, v := range m {
			keys[k] = true
			if sub, ok := v.(map[string]any); ok && k != "header" && k != "auth_params" {
				walk(sub)
			}
		}
	}
	walk(cfg)
	jsonName := map[string]string{"auth_param": "auth_params"}
	subdirectives := map[string]bool{}
	for _, line := range strings.Split(block, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "}" {
			continue
		}
		name := f[0]
		subdirectives[name] = true
		if n, ok := jsonName[name]; ok {
			name = n
		}
		if !keys[name] {
			t.Errorf("subdirective %s has no JSON field of that name", f[0])
		}
	}
	var fields func(t reflect.Type)
	fields = func(typ reflect.Type) {
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && name != "bearer" {
				fields(ft)
				continue
			}
			if name == "bearer" {
				fields(ft)
			}
			if name == "providers" {
				continue // provider blocks: testdata/several-providers.caddyfile and TestProviderCaddyfile
			}
			if name == "client_certificate_key" {
				name = "client_certificate" // its second value
			}
			if !subdirectives[name] && !subdirectives[strings.TrimSuffix(name, "s")] {
				t.Errorf("JSON field %s has no subdirective in every-subdirective.caddyfile", name)
			}
		}
	}
	fields(reflect.TypeFor[Handler]())
	if h.Bearer == nil || h.Client.ID != "my-app" || h.Session.Store != "cache" || h.Allow.RequireEmailVerified == nil ||
		h.Logout.EndSessionMethod != "get" || h.Login.UserInfo != UserInfoOn || h.Login.AuthParams["prompt"] != "consent" {
		t.Errorf("parsed config: %s", raw)
	}
}

// TestBadConfigFailsAtLoad runs each bad config through Caddy's own
// validation (what `caddy validate` and a reload do): it must fail with an
// error naming the field.
func TestBadConfigFailsAtLoad(t *testing.T) {
	const good = "issuer https://idp.example.com\n client_id app\n session_secret " + testSecret + "\n"
	for name, tc := range map[string]struct{ body, want string }{
		"missing issuer":       {"client_id app\n session_secret " + testSecret, "issuer is required"},
		"missing client_id":    {"issuer https://idp.example.com\n session_secret " + testSecret, "client_id is required"},
		"missing secret":       {"issuer https://idp.example.com\n client_id app", "session_secret is required"},
		"short secret":         {"issuer https://idp.example.com\n client_id app\n session_secret short", "session_secret #1 is 5 bytes"},
		"short older secret":   {"issuer https://idp.example.com\n client_id app\n session_secret " + testSecret + " tiny", "session_secret #2"},
		"empty env secret":     {"issuer https://idp.example.com\n client_id app\n session_secret {env.CADDY_OIDC_SURELY_UNSET}", "session_secret #1 is empty"},
		"relative issuer":      {"issuer idp.example.com\n client_id app\n session_secret " + testSecret, "issuer"},
		"no openid scope":      {good + " scopes profile", "must include openid"},
		"unknown store":        {good + " session_store disk", "session_store"},
		"bad redirect_uri":     {good + " redirect_uri //evil.example/cb", "redirect_uri"},
		"logout is callback":   {good + " logout_path /oauth2/callback", "logout_path"},
		"bad post-logout":      {good + " post_logout_redirect_uri javascript:x", "post_logout_redirect_uri"},
		"bad cookie name":      {good + " cookie_name __Host-x", "cookie_name"},
		"unknown subdirective": {good + " colour blue", "colour"},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := adapt(t, "http://localhost:9999 {\n oidc {\n "+tc.body+"\n }\n}\n")
			if err == nil {
				var cfg caddy.Config
				if err = json.Unmarshal(out, &cfg); err == nil {
					err = caddy.Validate(&cfg)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// And the good config validates without any network access.
	out, err := adapt(t, "http://localhost:9999 {\n oidc {\n "+good+"\n }\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	_ = json.Unmarshal(out, &cfg)
	if err := caddy.Validate(&cfg); err != nil {
		t.Errorf("a good config failed validation: %v", err)
	}
}

func TestGlobalOptionErrors(t *testing.T) {
	for name, tc := range map[string]struct{ src, want string }{
		"no backend":        {"{\n oidc {\n cache\n }\n}\n", "cache needs a backend"},
		"unknown backend":   {"{\n oidc {\n cache disk\n }\n}\n", `cache backend "disk" is unknown`},
		"memory with addr":  {"{\n oidc {\n cache memory {\n address x:1\n }\n }\n}\n", "cache memory takes only"},
		"bad size":          {"{\n oidc {\n cache valkey {\n address a:1\n l1_max_bytes lots\n }\n }\n}\n", "l1_max_bytes"},
		"size past int64":   {"{\n oidc {\n cache valkey {\n address a:1\n l1_max_bytes 9EiB\n }\n }\n}\n", "l1_max_bytes"},
		"bad db":            {"{\n oidc {\n cache valkey {\n address a:1\n db -1\n }\n }\n}\n", "db"},
		"unknown option":    {"{\n oidc {\n colour blue\n }\n}\n", `unrecognized oidc global option "colour"`},
		"unknown cache sub": {"{\n oidc {\n cache valkey {\n address a:1\n pool 3\n }\n }\n}\n", `unrecognized cache subdirective "pool"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := adapt(t, tc.src+"http://localhost:9999 {\n respond ok\n}\n")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Valkey without an address fails at load, naming the field.
	out, err := adapt(t, "{\n oidc {\n cache valkey\n }\n}\nhttp://localhost:9999 {\n respond ok\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	_ = json.Unmarshal(out, &cfg)
	if err := caddy.Validate(&cfg); err == nil || !strings.Contains(err.Error(), "address is required") {
		t.Errorf("valkey without address: got %v", err)
	}
}
