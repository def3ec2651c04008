// The in-process kube-controller-manager, limited to the garbage collector and namespace controller.
package main

import (
	"context"
	"fmt"

	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	"k8s.io/kubernetes/cmd/kube-controller-manager/names"
)

// controllerNames are the only controllers run: owner-reference cascades and
// namespace deletion are what Fleetward relies on; nothing here runs pods.
var controllerNames = []string{names.GarbageCollectorController, names.NamespaceController}

// runControllers runs the controllers against the API server in kubeconfig until
// ctx is cancelled. The API server must already be serving.
func runControllers(ctx context.Context, kubeconfig string) error {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return fmt.Errorf("kube-controller-manager options: %w", err)
	}
	s.Generic.Controllers = controllerNames
	s.Generic.ClientConnection.Kubeconfig = kubeconfig
	// One instance, so no leader election; no serving port either (nothing scrapes it).
	s.Generic.LeaderElection.LeaderElect = false
	s.SecureServing.BindPort = 0
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return fmt.Errorf("kube-controller-manager feature gates: %w", err)
	}

	known := kcmapp.KnownControllers()
	c, err := s.Config(ctx, known, kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases())
	if err != nil {
		return fmt.Errorf("kube-controller-manager config: %w", err)
	}
	return kcmapp.Run(ctx, c.Complete())
}
