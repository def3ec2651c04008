// Certificates, the service-account key and the admin kubeconfig of the test control plane.
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// pki is where the control plane's key material lives on disk.
type pki struct {
	dir string
}

func (p pki) caCert() string         { return filepath.Join(p.dir, "ca.crt") }
func (p pki) caKey() string          { return filepath.Join(p.dir, "ca.key") }
func (p pki) servingCert() string    { return filepath.Join(p.dir, "apiserver.crt") }
func (p pki) servingKey() string     { return filepath.Join(p.dir, "apiserver.key") }
func (p pki) adminCert() string      { return filepath.Join(p.dir, "admin.crt") }
func (p pki) adminKey() string       { return filepath.Join(p.dir, "admin.key") }
func (p pki) serviceAccount() string { return filepath.Join(p.dir, "service-account.key") }
func (p pki) kubeconfig() string     { return filepath.Join(p.dir, "admin.kubeconfig") }

// ensure generates every file that is missing. Files already there are kept, so a
// restart on the same data directory keeps the identity clients already trust.
func (p pki) ensure() error {
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return fmt.Errorf("create the PKI directory %s: %w", p.dir, err)
	}
	if !exists(p.caCert()) || !exists(p.caKey()) {
		if err := p.writeCA(); err != nil {
			return err
		}
	}
	caCert, caKey, err := p.loadCA()
	if err != nil {
		return err
	}
	if !exists(p.servingCert()) || !exists(p.servingKey()) {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 96, 0, 1)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		if err := p.writeLeaf(tmpl, caCert, caKey, p.servingCert(), p.servingKey()); err != nil {
			return err
		}
	}
	if !exists(p.adminCert()) || !exists(p.adminKey()) {
		// system:masters is the group RBAC lets do everything.
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "fleetward-e2e-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := p.writeLeaf(tmpl, caCert, caKey, p.adminCert(), p.adminKey()); err != nil {
			return err
		}
	}
	if !exists(p.serviceAccount()) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("generate the service-account key: %w", err)
		}
		if err := writeKey(p.serviceAccount(), key); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes an admin kubeconfig for the API server at serverURL.
func (p pki) writeKubeconfig(serverURL string) error {
	ca, err := os.ReadFile(p.caCert())
	if err != nil {
		return fmt.Errorf("read %s: %w", p.caCert(), err)
	}
	cert, err := os.ReadFile(p.adminCert())
	if err != nil {
		return fmt.Errorf("read %s: %w", p.adminCert(), err)
	}
	key, err := os.ReadFile(p.adminKey())
	if err != nil {
		return fmt.Errorf("read %s: %w", p.adminKey(), err)
	}
	const name = "fleetward-e2e"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: ca}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: "default"}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, p.kubeconfig()); err != nil {
		return fmt.Errorf("write the admin kubeconfig %s: %w", p.kubeconfig(), err)
	}
	return nil
}

func (p pki) writeCA() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate the CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "fleetward-e2e-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("sign the CA certificate: %w", err)
	}
	if err := writeCert(p.caCert(), der); err != nil {
		return err
	}
	return writeKey(p.caKey(), key)
}

func (p pki) loadCA() (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(p.caCert())
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", p.caCert(), err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("%s holds no PEM certificate; delete the data directory to regenerate it", p.caCert())
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w; delete the data directory to regenerate it", p.caCert(), err)
	}
	keyPEM, err := os.ReadFile(p.caKey())
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", p.caKey(), err)
	}
	block, _ = pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("%s holds no PEM key; delete the data directory to regenerate it", p.caKey())
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w; delete the data directory to regenerate it", p.caKey(), err)
	}
	return cert, key, nil
}

func (p pki) writeLeaf(tmpl *x509.Certificate, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate a key for %s: %w", certPath, err)
	}
	now := time.Now()
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(10 * 365 * 24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("sign %s: %w", certPath, err)
	}
	if err := writeCert(certPath, der); err != nil {
		return err
	}
	return writeKey(keyPath, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		// crypto/rand does not fail on Linux; a fixed serial would still be valid.
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func writeCert(path string, der []byte) error {
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode the key for %s: %w", path, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}
