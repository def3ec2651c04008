// The in-process kube-apiserver, configured the way its command line would be.
package main

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiServer is a kube-apiserver ready to run on its own listener.
type apiServer struct {
	opts apiserveroptions.CompletedOptions
}

// newAPIServer builds the API server's options from kube-apiserver flags, serving on
// listener and storing in etcd at etcdURL.
func newAPIServer(ctx context.Context, keys pki, etcdURL string, listener net.Listener, extraFlags []string) (*apiServer, error) {
	s := apiserveroptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, set := range s.Flags().FlagSets {
		fs.AddFlagSet(set)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	flags := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + keys.servingCert(),
		"--tls-private-key-file=" + keys.servingKey(),
		"--client-ca-file=" + keys.caCert(),
		"--service-account-key-file=" + keys.serviceAccount(),
		"--service-account-signing-key-file=" + keys.serviceAccount(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/24",
		// There are no nodes and no kube-proxy: the kubernetes Service needs no endpoints.
		"--endpoint-reconciler-type=none",
		// Fairness queues cost CPU and protect nothing in a single-user test cluster.
		"--enable-priority-and-fairness=false",
	}
	if err := fs.Parse(append(flags, extraFlags...)); err != nil {
		return nil, fmt.Errorf("kube-apiserver flags: %w", err)
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = port
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("kube-apiserver feature gates: %w", err)
	}
	// The API server's own loopback clients should not log warnings it issued itself.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("complete the kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	return &apiServer{opts: completed}, nil
}

// run serves until ctx is cancelled, then shuts down gracefully.
func (a *apiServer) run(ctx context.Context) error {
	config, err := apiserverapp.NewConfig(a.opts)
	if err != nil {
		return fmt.Errorf("kube-apiserver config: %w", err)
	}
	completed, err := config.Complete()
	if err != nil {
		return fmt.Errorf("complete the kube-apiserver config: %w", err)
	}
	server, err := apiserverapp.CreateServerChain(completed)
	if err != nil {
		return fmt.Errorf("create the kube-apiserver: %w", err)
	}
	prepared, err := server.PrepareRun()
	if err != nil {
		return fmt.Errorf("prepare the kube-apiserver: %w", err)
	}
	return prepared.Run(ctx)
}
