package cache

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valkey-io/valkey-go"
	"go.uber.org/zap"
)

// probeInterval is how often every node (every master of a cluster) is
// pinged, for the valkey_nodes gauge and the node up/down log lines.
const probeInterval = 2 * time.Second

// errorReason classes a failed call, so an operator can tell one node down
// (down, cluster) from a hung network (timeout) or a wrong password (auth).
func errorReason(err error) string {
	if ve, ok := valkey.IsValkeyErr(err); ok {
		msg := ve.Error()
		switch {
		case ve.IsLoading():
			return ReasonDown
		case ve.IsClusterDown() || ve.IsTryAgain():
			return ReasonCluster
		case strings.HasPrefix(msg, "MOVED") || strings.HasPrefix(msg, "ASK"):
			return ReasonCluster
		case strings.HasPrefix(msg, "NOAUTH") || strings.HasPrefix(msg, "WRONGPASS") || strings.HasPrefix(msg, "NOPERM"):
			return ReasonAuth
		}
		return ReasonOther
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return ReasonTimeout
	case errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, valkey.ErrNoSlot):
		return ReasonCluster
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), errors.Is(err, valkey.ErrClosing):
		return ReasonDown
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return ReasonDown
	}
	return ReasonOther
}

// noteError counts a Valkey error by reason and logs at most one line per
// 10 s. A call cancelled by its caller (a client gone) is not Valkey's error.
func (h *Hybrid) noteError(what string, err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	reason := errorReason(err)
	h.stats.addError(reason)
	n := h.errsSince.Add(1)
	if h.logThrottled(&h.lastErrLog, "valkey call failed", zap.String("during", what), zap.String("reason", reason), zap.Error(err),
		zap.Int64("errors_since_last_log", n), zap.Int64("nodes_down", h.stats.NodesDown.Load()), zap.Int64("nodes", h.stats.NodesDown.Load()+h.stats.NodesUp.Load())) {
		h.errsSince.Store(0)
	}
}

// logThrottled writes a warning unless one went through last in the past 10 s.
func (h *Hybrid) logThrottled(last *atomic.Int64, msg string, fields ...zap.Field) bool {
	now := time.Now().UnixNano()
	l := last.Load()
	if now-l < int64(10*time.Second) || !last.CompareAndSwap(l, now) {
		return false
	}
	h.logger.Warn(msg, fields...)
	return true
}

// masters returns the nodes that hold data: every master of a cluster (from
// CLUSTER SLOTS, which keeps a failed master listed with its slots), else
// the client's nodes. complete is false when that list could not be read.
func (h *Hybrid) masters(ctx context.Context, c valkey.Client) (addrs []string, nodes map[string]valkey.Client, complete bool) {
	nodes = c.Nodes()
	if c.Mode() != valkey.ClientModeCluster {
		for a := range nodes {
			addrs = append(addrs, a)
		}
		return addrs, nodes, true
	}
	for _, n := range nodes {
		cctx, cancel := context.WithTimeout(ctx, h.opts.Timeout*4)
		slots, err := n.Do(cctx, n.B().ClusterSlots().Build()).ToArray()
		cancel()
		if err != nil {
			continue
		}
		seen := map[string]bool{}
		for _, s := range slots {
			// [start, end, [host, port, id, ...], replicas...]
			r, err := s.ToArray()
			if err != nil || len(r) < 3 {
				continue
			}
			m, err := r[2].ToArray()
			if err != nil || len(m) < 2 {
				continue
			}
			host, _ := m[0].ToString()
			port, _ := m[1].AsInt64()
			a := net.JoinHostPort(host, strconv.FormatInt(port, 10))
			if !seen[a] {
				seen[a] = true
				addrs = append(addrs, a)
			}
		}
		if len(addrs) > 0 {
			return addrs, nodes, true
		}
	}
	for a := range nodes {
		addrs = append(addrs, a)
	}
	return addrs, nodes, false
}

// probeLoop pings every data node each probeInterval, keeps the
// valkey_nodes gauge and logs each node going down or coming back.
func (h *Hybrid) probeLoop(c valkey.Client) {
	defer h.wg.Done()
	down := map[string]time.Time{}
	for {
		h.probe(c, down)
		if !h.sleep(probeInterval) {
			return
		}
	}
}

func (h *Hybrid) probe(c valkey.Client, down map[string]time.Time) {
	addrs, nodes, _ := h.masters(h.ctx, c)
	errs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		n := nodes[a]
		if n == nil {
			errs[i] = errors.New("no connection to this node")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(h.ctx, max(h.opts.Timeout*4, time.Second))
			errs[i] = n.Do(ctx, n.B().Ping().Build()).Error()
			cancel()
		}()
	}
	wg.Wait()
	if h.ctx.Err() != nil {
		return
	}
	var up, dn int64
	for i := range addrs {
		if errs[i] == nil {
			up++
		} else {
			dn++
		}
	}
	h.stats.NodesUp.Store(up)
	h.stats.NodesDown.Store(dn)
	downSet := make(map[string]bool)
	for i, a := range addrs {
		if errs[i] != nil {
			downSet[a] = true
		}
	}
	h.downNodes.Store(&downSet)
	now := time.Now()
	for i, a := range addrs {
		since, wasDown := down[a]
		switch {
		case errs[i] != nil && !wasDown:
			down[a] = now
			h.logger.Warn("valkey node unreachable", zap.String("node", a), zap.String("reason", errorReason(errs[i])), zap.Error(errs[i]),
				zap.Int64("nodes_down", dn), zap.Int64("nodes", up+dn))
		case errs[i] == nil && wasDown:
			delete(down, a)
			h.logger.Info("valkey node reachable again", zap.String("node", a), zap.Duration("down_for", now.Sub(since).Round(time.Millisecond)),
				zap.Int64("nodes_down", dn), zap.Int64("nodes", up+dn))
		}
	}
	for a := range down {
		if !slices.Contains(addrs, a) {
			delete(down, a) // no longer part of the deployment
		}
	}
}
