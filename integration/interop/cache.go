// Package interop runs caddy-oidc against identity providers that this
// project did not write: Ory Hydra (built from source as a Go tool of
// integration/hydra) and panva's oidc-provider (npm, run with Node), next to
// the development IdP. The launchers here are also for other suites (the
// FAPI tests reuse StartOIDCProvider with more features on); the scenarios
// are in interop_test.go.
//
// Build artefacts (Hydra's binary, oidc-provider's node_modules) are kept
// under CacheDir, outside the repository, keyed by what they are built from.
package interop

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
)

// CacheDir is where build artefacts live: $CADDY_OIDC_CACHE, else
// $XDG_CACHE_HOME/caddy-oidc (~/.cache/caddy-oidc).
func CacheDir() (string, error) {
	if d := os.Getenv("CADDY_OIDC_CACHE"); d != "" {
		return d, os.MkdirAll(d, 0o755)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	d := filepath.Join(base, "caddy-oidc")
	return d, os.MkdirAll(d, 0o755)
}

// integrationDir is the repository's integration/ directory, found from this
// source file so that any package's tests can use the launchers.
func integrationDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// contentKey hashes files (and extra strings) into a short cache key.
func contentKey(files []string, extra ...string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.Base(f), len(b))
		h.Write(b)
	}
	for _, e := range extra {
		fmt.Fprintf(h, "%s\x00", e)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// withLock runs fn holding an exclusive lock on path, so that two test
// processes do not build the same artefact at once.
func withLock(path string, fn func() error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }() // closing f releases it too
	return fn()
}
