// Package redistest gives tests real Valkey-protocol servers: the machine's
// Redis at 127.0.0.1:6379, or a redis-server of the test's own on a free
// port that the test can kill and restart. A missing server fails the test.
package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
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
	return StartClusterWith(t).Addrs
}

// Cluster is a three-master cluster owned by one test, whose nodes the test
// can kill and restart (a restarted node rejoins with its nodes.conf).
type Cluster struct {
	t     testing.TB
	Nodes []*Server
	Addrs []string
}

// StartClusterWith runs a three-master cluster (no replicas) whose nodes
// get the extra redis-server arguments, e.g. "--cluster-require-full-coverage",
// "no" or "--appendonly", "yes".
func StartClusterWith(t testing.TB, extra ...string) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		missing(t, "redis-cli is not installed (apt-get install redis-tools)")
	}
	c := &Cluster{t: t}
	for range 3 {
		args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"}, extra...)
		s := Start(t, args...)
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitOK()
	return c
}

// WaitOK waits until every node says cluster_state:ok and knows every other
// node as connected (after a restart, until the restarted node is back in).
func (c *Cluster) WaitOK() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		for _, a := range c.Addrs {
			info, _ := CLI(a, "cluster", "info")
			nodes, _ := CLI(a, "cluster", "nodes")
			if !strings.Contains(info, "cluster_state:ok") || strings.Contains(nodes, "fail") || strings.Count(nodes, " connected") != len(c.Addrs) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatal("the cluster did not reach cluster_state:ok with every node connected")
}

// MasterOf returns the index in Nodes of the master serving key's slot,
// asking the first node of skip's complement that answers.
func (c *Cluster) MasterOf(key string, skip ...int) int {
	c.t.Helper()
	for i, a := range c.Addrs {
		if slices.Contains(skip, i) {
			continue
		}
		out, err := CLI(a, "cluster", "keyslot", key)
		if err != nil {
			continue
		}
		slot, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			continue
		}
		nodes, err := CLI(a, "cluster", "nodes")
		if err != nil {
			continue
		}
		for line := range strings.Lines(nodes) {
			// <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges...>
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "master") {
				continue
			}
			addr, _, _ := strings.Cut(f[1], "@")
			for _, r := range f[8:] {
				lo, hi, found := strings.Cut(r, "-")
				if !found {
					hi = lo
				}
				l, err1 := strconv.Atoi(lo)
				h, err2 := strconv.Atoi(hi)
				if err1 == nil && err2 == nil && l <= slot && slot <= h {
					if j := slices.Index(c.Addrs, addr); j >= 0 {
						return j
					}
				}
			}
		}
	}
	c.t.Fatalf("no node says which master serves %q", key)
	return -1
}

// CLI runs redis-cli against addr ("host:port") and returns its output.
func CLI(addr string, args ...string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("redis-cli %v: %w: %s", args, err, out)
	}
	return string(out), nil
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

// Poll checks cond every 20 ms for at most d and reports whether it came
// true: a bounded wait on a condition, never a guessed sleep.
func Poll(d time.Duration, cond func() bool) bool {
	deadline := time.After(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
	return true
}

// NumSub is the number of subscribers of channel on the node at addr
// (-1 when the node cannot answer).
func NumSub(addr, channel string) int {
	out, err := CLI(addr, "PUBSUB", "NUMSUB", channel)
	if err != nil {
		return -1
	}
	f := strings.Fields(out)
	if len(f) < 2 {
		return -1
	}
	n, _ := strconv.Atoi(f[len(f)-1])
	return n
}

// ForceSubscriptionsOnto kills the pub/sub connections on every node but
// victim until all n subscribers of channel are on victim (a client
// re-subscribes on another node when its connection is killed).
func (c *Cluster) ForceSubscriptionsOnto(victim int, channel string, n int) {
	c.t.Helper()
	for range 60 {
		if NumSub(c.Addrs[victim], channel) == n {
			return
		}
		for i, a := range c.Addrs {
			if i != victim {
				_, _ = CLI(a, "CLIENT", "KILL", "TYPE", "pubsub")
			}
		}
		if !Poll(10*time.Second, func() bool {
			total := 0
			for _, a := range c.Addrs {
				total += max(NumSub(a, channel), 0)
			}
			return total == n
		}) {
			c.t.Fatalf("the %d subscribers of %s did not come back", n, channel)
		}
	}
	c.t.Fatalf("could not move the %d subscriptions onto node %d", n, victim)
}
