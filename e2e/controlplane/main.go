// Command controlplane runs etcd, kube-apiserver and the garbage-collector and
// namespace controllers in one process on loopback, for Fleetward's end-to-end tests.
//
// Stdout carries only machine-readable lines: "data-dir: DIR", "server: URL",
// "kubeconfig: PATH" once the admin kubeconfig is written, then "ready" once
// /readyz answers ok, the --crds are served and the controllers run. Logs go to stderr. SIGTERM or
// SIGINT shuts everything down; a data directory that was not given is removed.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

// ports are the loopback ports of one data directory, kept so a restart serves
// at the same address (clients keep their kubeconfig).
type ports struct {
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
	APIServer  int `json:"apiServer"`
}

func run() error {
	dataDir := flag.String("data-dir", "", "directory for etcd data, certificates and the kubeconfig; kept, and reused with the same ports on restart (default: a temporary directory removed on exit)")
	apiPort := flag.Int("port", 0, "kube-apiserver port on 127.0.0.1 (default: the port saved in --data-dir, else a free one)")
	etcdLogLevel := flag.String("etcd-log-level", "error", "etcd log level: debug, info, warn or error")
	var apiFlags, crdFiles multiFlag
	flag.Var(&apiFlags, "apiserver-flag", "extra kube-apiserver flag, e.g. --apiserver-flag=--v=2 (repeatable)")
	flag.Var(&crdFiles, "crds", "YAML file of CustomResourceDefinitions to install before the controllers start (repeatable)")
	klog.InitFlags(nil)
	flag.Parse()

	dir := *dataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "fleetward-controlplane-")
		if err != nil {
			return fmt.Errorf("create a temporary data directory (set --data-dir instead): %w", err)
		}
		dir = tmp
		defer os.RemoveAll(tmp)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("resolve --data-dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create the data directory %s: %w", dir, err)
	}
	emit("data-dir", dir)

	p, err := loadPorts(dir, *apiPort)
	if err != nil {
		return err
	}
	keys := pki{dir: filepath.Join(dir, "pki")}
	if err := keys.ensure(); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	etcd, etcdURL, err := startEtcd(dir, p.EtcdClient, p.EtcdPeer, *etcdLogLevel)
	if err != nil {
		return err
	}
	defer etcd.Close()

	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p.APIServer))
	if err != nil {
		return fmt.Errorf("listen on 127.0.0.1:%d for kube-apiserver (pick another --port or data directory): %w", p.APIServer, err)
	}
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", p.APIServer)
	api, err := newAPIServer(ctx, keys, etcdURL, listener, apiFlags)
	if err != nil {
		return err
	}
	apiDone := make(chan error, 1)
	go func() { apiDone <- api.run(ctx) }()

	if err := keys.writeKubeconfig(serverURL); err != nil {
		return err
	}
	emit("server", serverURL)
	emit("kubeconfig", keys.kubeconfig())

	if err := waitReady(ctx, keys.kubeconfig(), apiDone, signals); err != nil {
		cancel()
		return errors.Join(err, waitStopped(apiDone))
	}
	if err := installCRDs(ctx, keys.kubeconfig(), crdFiles); err != nil {
		cancel()
		return errors.Join(err, waitStopped(apiDone))
	}
	controllersDone := make(chan error, 1)
	go func() { controllersDone <- runControllers(ctx, keys.kubeconfig()) }()
	emit("ready", "")

	var runErr error
	select {
	case sig := <-signals:
		klog.InfoS("Shutting down", "signal", sig.String())
	case err := <-apiDone:
		runErr = fmt.Errorf("kube-apiserver stopped: %w", err)
		apiDone <- nil
	case err := <-controllersDone:
		runErr = fmt.Errorf("kube-controller-manager stopped: %w", err)
	}
	cancel()
	return errors.Join(runErr, waitStopped(apiDone))
}

// waitReady polls /readyz with the admin kubeconfig until it answers ok and the
// default namespace exists, so a client that reads "ready" can use the cluster.
func waitReady(ctx context.Context, kubeconfig string, apiDone chan error, signals chan os.Signal) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load the admin kubeconfig %s: %w", kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build a client from %s: %w", kubeconfig, err)
	}
	deadline := time.After(3 * time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		select {
		case err := <-apiDone:
			apiDone <- err
			return fmt.Errorf("kube-apiserver stopped before it was ready: %w", err)
		case sig := <-signals:
			return fmt.Errorf("interrupted by %s before the control plane was ready", sig)
		case <-deadline:
			return fmt.Errorf("kube-apiserver not ready after 3 minutes; last /readyz answer: %s", last)
		case <-tick.C:
		}
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			last = strings.TrimSpace(string(body)) + " " + err.Error()
			continue
		}
		if _, err := client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
			last = "ok, but the default namespace is not there yet: " + err.Error()
			continue
		}
		return nil
	}
}

// waitStopped waits for the API server to finish its graceful shutdown.
func waitStopped(apiDone chan error) error {
	select {
	case err := <-apiDone:
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("kube-apiserver shutdown: %w", err)
		}
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("kube-apiserver did not stop within 30s")
	}
}

// loadPorts reads the ports saved in dir, or picks free ones and saves them.
func loadPorts(dir string, apiPort int) (ports, error) {
	path := filepath.Join(dir, "ports.json")
	var p ports
	if data, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(data, &p); err != nil {
			return p, fmt.Errorf("parse %s: %w; delete it to pick new ports", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return p, fmt.Errorf("read %s: %w", path, err)
	}
	if apiPort != 0 {
		p.APIServer = apiPort
	}
	// The listeners that found free ports stay open until every port is picked, so the
	// kernel cannot hand the same port out twice (etcd's client and peer on one port fail
	// to start); a port already set is never picked again either.
	all := []*int{&p.EtcdClient, &p.EtcdPeer, &p.APIServer}
	taken := map[int]bool{}
	for _, port := range all {
		if *port != 0 {
			taken[*port] = true
		}
	}
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for _, port := range all {
		for *port == 0 {
			l, err := listenFree()
			if err != nil {
				return p, err
			}
			held = append(held, l)
			if free := l.Addr().(*net.TCPAddr).Port; !taken[free] {
				*port = free
				taken[free] = true
			}
		}
	}
	data, err := json.Marshal(p)
	if err != nil {
		return p, fmt.Errorf("encode the ports: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return p, fmt.Errorf("write %s: %w", path, err)
	}
	return p, nil
}

// listenFree listens on a loopback port the kernel picks: one free until the listener is
// closed.
func listenFree() (net.Listener, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	return l, nil
}

// emit prints one machine-readable line on stdout.
func emit(key, value string) {
	if value == "" {
		fmt.Println(key)
		return
	}
	fmt.Printf("%s: %s\n", key, value)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
