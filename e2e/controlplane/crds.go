// CRDs installed before the controllers start, so the garbage collector knows their kinds from its first sync.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/clientcmd"
)

// installCRDs creates (or updates) every CustomResourceDefinition in the YAML
// streams at paths and waits until the API serves each of them. The garbage
// collector rediscovers kinds only every 30 s; installed first, they are known
// from the start and cascades on them work at once.
func installCRDs(ctx context.Context, kubeconfig string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load the admin kubeconfig %s: %w", kubeconfig, err)
	}
	client, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build an apiextensions client: %w", err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("build a discovery client: %w", err)
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, path := range paths {
		read, err := readCRDs(path)
		if err != nil {
			return err
		}
		crds = append(crds, read...)
	}
	api := client.ApiextensionsV1().CustomResourceDefinitions()
	for _, crd := range crds {
		_, err := api.Create(ctx, crd, metav1.CreateOptions{FieldManager: "fleetward-e2e-controlplane"})
		if apierrors.IsAlreadyExists(err) {
			// A restart on the same data directory: bring the stored one up to date.
			current, getErr := api.Get(ctx, crd.Name, metav1.GetOptions{})
			if getErr != nil {
				return fmt.Errorf("read CRD %s: %w", crd.Name, getErr)
			}
			crd.ResourceVersion = current.ResourceVersion
			_, err = api.Update(ctx, crd, metav1.UpdateOptions{FieldManager: "fleetward-e2e-controlplane"})
		}
		if err != nil {
			return fmt.Errorf("install CRD %s: %w", crd.Name, err)
		}
	}
	for _, crd := range crds {
		if err := waitServed(ctx, disco, crd); err != nil {
			return err
		}
	}
	return nil
}

func readCRDs(path string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open --crds file: %w", err)
	}
	defer f.Close()
	decoder := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var crds []*apiextensionsv1.CustomResourceDefinition
	for {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		err := decoder.Decode(crd)
		if errors.Is(err, io.EOF) {
			return crds, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d is not a CustomResourceDefinition: %w", path, len(crds)+1, err)
		}
		if crd.Kind == "" && crd.Name == "" {
			continue // an empty document between two "---"
		}
		if crd.Kind != "CustomResourceDefinition" {
			return nil, fmt.Errorf("%s: document %d is a %q, not a CustomResourceDefinition", path, len(crds)+1, crd.Kind)
		}
		crds = append(crds, crd)
	}
}

// waitServed waits until every served version of crd shows in discovery.
func waitServed(ctx context.Context, disco discovery.DiscoveryInterface, crd *apiextensionsv1.CustomResourceDefinition) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, v := range crd.Spec.Versions {
			if !v.Served {
				continue
			}
			gv := crd.Spec.Group + "/" + v.Name
			list, err := disco.ServerResourcesForGroupVersion(gv)
			if err != nil {
				last = err
				return false, nil
			}
			found := false
			for _, r := range list.APIResources {
				found = found || r.Name == crd.Spec.Names.Plural
			}
			if !found {
				last = fmt.Errorf("%s is not in the discovery of %s yet", crd.Spec.Names.Plural, gv)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s not served within a minute (last: %v): %w", crd.Name, last, err)
	}
	return nil
}
