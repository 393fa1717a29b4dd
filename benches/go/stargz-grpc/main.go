// stargz-grpc: stargz-snapshotter served as a containerd proxy snapshotter, for
// `veil bench`'s peer mode. Upstream's cmd/containerd-stargz-grpc is not packaged in
// Debian and its service package needs the k8s CRI API; this main wires the packaged
// fs, fs/source and snapshot packages together instead: layers are found from the
// labels `ctr-remote images rpull` sets, registries are reached over plain HTTP
// (veil-bench's loopback registry), nothing else is configured.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "", "state directory (snapshots, FUSE mounts, cache)")
	address := flag.String("address", "", "unix socket to serve the snapshots API on")
	noBackground := flag.Bool("no-background-fetch", false, "do not fetch whole layers in the background")
	flag.Parse()
	if *root == "" || *address == "" {
		log.Fatal("stargz-grpc: -root and -address are required")
	}
	ctx := context.Background()
	hosts := func(ref reference.Spec) ([]docker.RegistryHost, error) {
		return []docker.RegistryHost{{
			Client:       &http.Client{Transport: http.DefaultTransport},
			Host:         ref.Hostname(),
			Scheme:       "http",
			Path:         "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}}, nil
	}
	cfg := fsconfig.Config{NoBackgroundFetch: *noBackground}
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), cfg,
		stargzfs.WithGetSources(source.FromDefaultLabels(source.RegistryHosts(hosts))),
		stargzfs.WithOverlayOpaqueType(layer.OverlayOpaqueTrusted))
	if err != nil {
		log.Fatalf("stargz-grpc: filesystem: %v", err)
	}
	sn, err := snbase.NewSnapshotter(ctx, filepath.Join(*root, "snapshotter"), fs, snbase.AsynchronousRemove)
	if err != nil {
		log.Fatalf("stargz-grpc: snapshotter: %v", err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	l, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatalf("stargz-grpc: listen: %v", err)
	}
	go func() {
		if err := rpc.Serve(l); err != nil {
			log.Printf("stargz-grpc: serve: %v", err)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.Printf("stargz-grpc: close: %v", err)
	}
}
