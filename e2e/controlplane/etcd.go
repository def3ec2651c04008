// The embedded etcd that stores the test control plane's objects.
package main

import (
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd starts a single-member etcd on loopback and waits until it serves.
func startEtcd(dataDir string, clientPort, peerPort int, logLevel string) (*embed.Etcd, string, error) {
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}

	cfg := embed.NewConfig()
	cfg.Name = "controlplane"
	cfg.Dir = filepath.Join(dataDir, "etcd")
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = logLevel
	cfg.LogOutputs = []string{"stderr"}
	// A test cluster's data is thrown away; fsync only makes every write slow.
	cfg.UnsafeNoFsync = true
	// Room for the control-plane benchmark's largest data sets (half a million objects and
	// their status writes across 100 namespaces), past etcd's default quota of 2 GiB; 8 GiB
	// is the most etcd suggests.
	cfg.QuotaBackendBytes = 8 << 30

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start etcd in %s on ports %d/%d: %w", cfg.Dir, clientPort, peerPort, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("etcd failed while starting: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd in %s was not ready within 60s", cfg.Dir)
	}
	return e, clientURL.String(), nil
}
