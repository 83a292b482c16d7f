// Package redistest gives tests real Valkey-protocol servers: the machine's
// Redis at 127.0.0.1:6379, or a redis-server of the test's own on a free
// port that the test can kill and restart. A missing server fails the test.
package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Shared returns the address of the machine's Redis (127.0.0.1:6379).
func Shared(t testing.TB) string {
	t.Helper()
	const addr = "127.0.0.1:6379"
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		missing(t, "no Redis at "+addr+" (start one: redis-server --daemonize yes)")
	}
	c.Close()
	return addr
}

// missing fails the test: the cache tests are part of what `make test`
// proves (.ci/run installs and starts Redis when a machine lacks it).
func missing(t testing.TB, why string) {
	t.Helper()
	t.Fatal(why)
}

// Server is a redis-server owned by one test.
type Server struct {
	t    testing.TB
	Addr string
	Port int
	dir  string
	cmd  *exec.Cmd
	args []string
}

// Start runs redis-server on a free port; it is killed when the test ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		missing(t, "redis-server is not installed (apt-get install redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{t: t, Port: port, Addr: fmt.Sprintf("127.0.0.1:%d", port), dir: t.TempDir()}
	s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir}, extra...)
	s.Restart()
	t.Cleanup(s.Kill)
	return s
}

// Restart starts the server again on the same port (after Kill).
func (s *Server) Restart() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("redis-server on %s did not start", s.Addr)
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// StartCluster runs three redis-server nodes with cluster mode on and joins
// them with redis-cli --cluster create; it returns their addresses.
func StartCluster(t testing.TB) []string {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		missing(t, "redis-cli is not installed (apt-get install redis-tools)")
	}
	var addrs []string
	for range 3 {
		s := Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
		addrs = append(addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		for _, a := range addrs {
			_, port, _ := net.SplitHostPort(a)
			out, _ := exec.Command("redis-cli", "-p", port, "cluster", "info").Output()
			if !strings.Contains(string(out), "cluster_state:ok") {
				ok = false
			}
		}
		if ok {
			return addrs
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the cluster did not reach cluster_state:ok")
	return nil
}

// StartSentinel runs a redis sentinel watching master (as "mymaster") and
// returns its address.
func StartSentinel(t testing.TB, master *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\n", port, dir, master.Port)
	path := dir + "/sentinel.conf"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("redis-server", path, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("redis-cli", "-p", strconv.Itoa(port), "sentinel", "get-master-addr-by-name", "mymaster").Output()
		if strings.Contains(string(out), strconv.Itoa(master.Port)) {
			return addr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the sentinel did not come up")
	return ""
}
