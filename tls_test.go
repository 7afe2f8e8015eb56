package rediscache

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// writeSelfSignedCert writes a certificate and key for 127.0.0.1.
func writeSelfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// startTLSRedis runs a TLS-only redis-server that requires a password, as
// Upstash does, and returns its port.
func startTLSRedis(t *testing.T, password string) int {
	t.Helper()
	dir := t.TempDir()
	cert, key := writeSelfSignedCert(t, dir)
	port := freePort(t)
	logs := runRedisServer(t, "TLS redis",
		"--port", "0", "--tls-port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", cert,
		"--tls-auth-clients", "no", "--requirepass", password,
		"--save", "", "--appendonly", "no", "--dir", dir)
	client := redis.NewClient(&redis.Options{
		Addr: fmt.Sprintf("127.0.0.1:%d", port), Password: password,
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
	})
	t.Cleanup(func() { _ = client.Close() })
	if !harnessWaitUntil(15*time.Second, func() bool {
		return client.Ping(context.Background()).Err() == nil
	}) {
		if strings.Contains(logs.String(), "TLS") && strings.Contains(logs.String(), "not") {
			t.Fatalf("this redis-server has no TLS support:\n%s", logs.String())
		}
		t.Fatalf("TLS redis on %d never answered:\n%s", port, logs.String())
	}
	return port
}

// rediss:// with the password from an environment placeholder, the way an
// Upstash database is configured; the secret never appears in the config.
func TestTLSRedisWithPasswordFromEnv(t *testing.T) {
	const token = "s3cret-token"
	port := startTLSRedis(t, token)
	up := newUpstream(t)
	c := startCaddyWith(t, caddyOptions{Env: []string{"REDIS_TOKEN=" + token}}, fmt.Sprintf(`
	redis_cache {
		redis rediss://127.0.0.1:%d?skip_verify=true
		password {env.REDIS_TOKEN}
		namespace tls
		route api /api/* 1m
	}
	reverse_proxy %s`, port, strings.TrimPrefix(up.URL, "http://")))

	res, first := c.Get("/api/secure")
	if res.StatusCode != 200 || res.Header.Get("X-Cache") != "MISS" {
		t.Fatalf("first: %d X-Cache=%q Cache-Status=%q", res.StatusCode, res.Header.Get("X-Cache"), res.Header.Get("Cache-Status"))
	}
	res, second := c.Get("/api/secure")
	if res.Header.Get("X-Cache") != "HIT" || second != first {
		t.Fatalf("second: X-Cache=%q, want HIT with the first body", res.Header.Get("X-Cache"))
	}
	if up.Calls("GET", "/api/secure") != 1 {
		t.Errorf("upstream called %d times, want 1", up.Calls("GET", "/api/secure"))
	}
	_, cfg := c.Admin("GET", "/config/", "")
	if strings.Contains(cfg, token) {
		t.Errorf("the resolved secret appears in the running config: %s", cfg)
	}
	if !strings.Contains(cfg, "{env.REDIS_TOKEN}") {
		t.Errorf("the config does not keep the placeholder: %s", cfg)
	}
}
