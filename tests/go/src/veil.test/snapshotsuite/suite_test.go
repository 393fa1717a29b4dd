// Package snapshotsuite runs containerd's own snapshotter test suite
// (github.com/containerd/containerd/snapshots/testsuite) against a remote
// snapshotter that serves containerd's snapshots gRPC API on a unix socket.
//
// It is built in GOPATH mode against Debian's containerd 1.6 Go sources:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode:<repo>/tests/go go test -c -o suite.test
//
// and run as root with the socket in VEIL_SNAPSHOTTER_ADDRESS:
//
//	VEIL_SNAPSHOTTER_ADDRESS=/run/veil.sock ./suite.test -test.v -test.parallel 1
//
// The suite's sub-tests call t.Parallel() but all share the one remote
// snapshotter, so they must run one at a time (-test.parallel 1). After each
// sub-test every snapshot is removed again so the next one starts empty.
// tests/src/gosuite.rs builds and runs this from `cargo test`.
package snapshotsuite

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// addressEnv names the environment variable holding the snapshotter's socket path.
const addressEnv = "VEIL_SNAPSHOTTER_ADDRESS"

// snapshotterName is sent in every request; a proxy plugin ignores it.
const snapshotterName = "veil"

func TestVeilSnapshotterSuite(t *testing.T) {
	address := os.Getenv(addressEnv)
	if address == "" {
		t.Fatalf("%s is not set: it must name the snapshotter's unix socket", addressEnv)
	}
	testsuite.SnapshotterSuite(t, "Veil", func(ctx context.Context, _ string) (snapshots.Snapshotter, func() error, error) {
		// The suite's root directory is not used: the remote snapshotter has its own.
		return connect(ctx, address)
	})
}

// connect dials the snapshotter's socket and returns it as a snapshots.Snapshotter,
// with a cleanup that removes every snapshot left in ctx's namespace and closes the
// connection.
func connect(ctx context.Context, address string) (snapshots.Snapshotter, func() error, error) {
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, "unix://"+address,
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", address)
		}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("dialing snapshotter at %s: %w", address, err)
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), snapshotterName)
	cleanup := func() error {
		defer conn.Close()
		return removeAll(ctx, sn)
	}
	return sn, cleanup, nil
}

// removeAll removes every snapshot, children before parents, until none is left.
// It fails if a round removes nothing while snapshots remain.
func removeAll(ctx context.Context, sn snapshots.Snapshotter) error {
	for {
		var all []snapshots.Info
		if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			all = append(all, info)
			return nil
		}); err != nil {
			return fmt.Errorf("walking snapshots: %w", err)
		}
		if len(all) == 0 {
			return nil
		}
		parents := map[string]bool{}
		for _, info := range all {
			if info.Parent != "" {
				parents[info.Parent] = true
			}
		}
		removed := 0
		var lastErr error
		for _, info := range all {
			if parents[info.Name] {
				continue // a child still refers to it: remove it in a later round
			}
			if err := sn.Remove(ctx, info.Name); err != nil {
				lastErr = fmt.Errorf("removing snapshot %q: %w", info.Name, err)
				continue
			}
			removed++
		}
		if removed == 0 {
			if lastErr == nil {
				lastErr = fmt.Errorf("snapshots form a cycle")
			}
			return fmt.Errorf("%d snapshot(s) left after cleanup: %w", len(all), lastErr)
		}
	}
}
