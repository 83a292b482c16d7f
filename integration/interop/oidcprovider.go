package interop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// OIDCProviderConfig is the JSON that integration/oidcprovider/server.mjs
// reads; its header comment says what each field does. Features are
// deep-merged over the suite's defaults, Provider over the whole
// configuration, so a FAPI run can turn on what it needs without a new script.
type OIDCProviderConfig struct {
	Clients            []map[string]any          `json:"clients"`
	Accounts           map[string]Account        `json:"accounts,omitempty"`
	Claims             map[string][]string       `json:"claims,omitempty"`
	TTL                map[string]int            `json:"ttl,omitempty"`
	Features           map[string]any            `json:"features,omitempty"`
	Resources          map[string]ResourceServer `json:"resources,omitempty"`
	RotateRefreshToken *bool                     `json:"rotateRefreshToken,omitempty"`
	LoopbackFetch      *bool                     `json:"loopbackFetch,omitempty"`
	Provider           map[string]any            `json:"provider,omitempty"`
	// DPoPNonces makes every DPoP proof carry the server's nonce.
	DPoPNonces bool `json:"dpopNonces,omitempty"`
	// TLS serves HTTPS with this certificate and key (PEM files).
	TLS *struct {
		Cert string `json:"cert"`
		Key  string `json:"key"`
	} `json:"tls,omitempty"`
	// MTLS serves HTTPS with this certificate and key and turns on
	// oidc-provider's mTLS (RFC 8705) with client certificates verified
	// against CA (PEM files).
	MTLS *MTLSFiles `json:"mtls,omitempty"`
}

// MTLSFiles are the PEM files of an mTLS-enabled oidc-provider: its server
// certificate and key, and the CA that client certificates must chain to.
type MTLSFiles struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
	CA   string `json:"ca"`
	// Aliases moves client certificates to a second port: the issuer's
	// asks for none, and discovery announces that port's token, userinfo,
	// introspection and revocation endpoints as mtls_endpoint_aliases.
	Aliases bool `json:"aliases,omitempty"`
}

// Account is a user of oidc-provider's development login screen (which
// takes any password: the login typed in is the account id and the sub).
type Account struct {
	Claims map[string]any `json:"claims"`
}

// ResourceServer is an RFC 8707 resource indicator's server: its scope and
// the access-token format ("opaque" or "jwt"), per client or by default.
type ResourceServer struct {
	Scope   string            `json:"scope,omitempty"`
	Format  string            `json:"format,omitempty"`
	Formats map[string]string `json:"formats,omitempty"`
}

// OIDCProvider is a running oidc-provider.
type OIDCProvider struct {
	Issuer string
	cmd    *exec.Cmd
	logs   *SyncBuffer
}

// OIDCProviderStats are what the IdP counted (GET /__interop/stats).
type OIDCProviderStats struct {
	Token map[string]struct {
		OK      int64 `json:"ok"`
		Refused int64 `json:"refused"`
	} `json:"token"`
	Revocation struct {
		OK      int64 `json:"ok"`
		Refused int64 `json:"refused"`
	} `json:"revocation"`
	Introspection struct {
		OK      int64 `json:"ok"`
		Refused int64 `json:"refused"`
	} `json:"introspection"`
	Backchannel struct {
		OK     int64    `json:"ok"`
		Error  int64    `json:"error"`
		Errors []string `json:"errors"`
	} `json:"backchannel"`
	EndSession         int64             `json:"end_session"`
	LatestRefreshToken map[string]string `json:"latest_refresh_token"`
	// TokenErrors say why the token endpoint refused, in order:
	// "<error>: <error_detail>".
	TokenErrors []string `json:"token_errors"`
}

// SyncBuffer collects a child process's output while a test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// InstallOIDCProvider installs integration/oidcprovider's package-lock.json
// with `npm ci` into the cache (once per lock file and Node major version)
// and returns the directory that holds its node_modules.
func InstallOIDCProvider() (string, error) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("%s is not installed (apt-get install nodejs npm; .ci/run installs it)", tool)
		}
	}
	nodeVersion, err := exec.Command("node", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("node --version: %v", err)
	}
	major, _, _ := strings.Cut(strings.TrimSpace(string(nodeVersion)), ".")
	src := filepath.Join(integrationDir(), "oidcprovider")
	files := []string{filepath.Join(src, "package.json"), filepath.Join(src, "package-lock.json")}
	key, err := contentKey(files, major)
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "oidcprovider-"+key)
	err = withLock(dir+".lock", func() error {
		if _, err := os.Stat(filepath.Join(dir, ".installed")); err == nil {
			return nil
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
				return err
			}
		}
		npm := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error")
		npm.Dir = dir
		if out, err := npm.CombinedOutput(); err != nil {
			return fmt.Errorf("npm ci in %s: %v\n%s", dir, err, out)
		}
		return os.WriteFile(filepath.Join(dir, ".installed"), nil, 0o644)
	})
	return dir, err
}

// StartOIDCProvider runs integration/oidcprovider/server.mjs with cfg on a
// free port of 127.0.0.1 until the test ends.
func StartOIDCProvider(t testing.TB, cfg OIDCProviderConfig) *OIDCProvider {
	t.Helper()
	modules, err := InstallOIDCProvider()
	if err != nil {
		t.Fatal(err)
	}
	// The script runs from a directory of its own whose node_modules is the
	// cached install: Node resolves packages from the script's directory.
	dir := t.TempDir()
	script, err := os.ReadFile(filepath.Join(integrationDir(), "oidcprovider", "server.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.mjs"), script, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(modules, "node_modules"), filepath.Join(dir, "node_modules")); err != nil {
		t.Fatal(err)
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &OIDCProvider{logs: new(SyncBuffer)}
	cmd := exec.Command("node", filepath.Join(dir, "server.mjs"), filepath.Join(dir, "config.json"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBUG=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("oidc-provider output:\n%s", p.logs.String())
		}
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var hello struct {
				Issuer string `json:"issuer"`
			}
			if json.Unmarshal(sc.Bytes(), &hello) == nil && hello.Issuer != "" {
				ready <- hello.Issuer
				break
			}
			_, _ = p.logs.Write(append(sc.Bytes(), '\n')) // a SyncBuffer: cannot fail
		}
		_, _ = io.Copy(p.logs, stdout)
	}()
	select {
	case p.Issuer = <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("oidc-provider did not start:\n%s", p.logs.String())
	}
	return p
}

// Logs returns what the provider printed (warnings, errors).
func (p *OIDCProvider) Logs() string { return p.logs.String() }

// Stats fetches the provider's counters (over plain HTTP: a TLS run's
// client trusts its own CA, see StatsWith).
func (p *OIDCProvider) Stats() (OIDCProviderStats, error) { return p.StatsWith(http.DefaultClient) }

// StatsWith fetches the provider's counters with client.
func (p *OIDCProvider) StatsWith(client *http.Client) (OIDCProviderStats, error) {
	var s OIDCProviderStats
	resp, err := client.Get(p.Issuer + "/__interop/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("stats: %s", resp.Status)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}
