package rediscache

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A connection upgrade (WebSocket and the like) on a cached route passes
// through: the cache never stands between the client and the hijacked
// connection.
func TestUpgradePassesThrough(t *testing.T) {
	up := newUpstream(t)
	up.Handle("/api/ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "upgrade required", http.StatusUpgradeRequired)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = rw.Flush()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(rw, buf); err == nil {
			_, _ = rw.Write(buf)
			_ = rw.Flush()
		}
	})
	c := startCaddy(t, fmt.Sprintf(`
	redis_cache {
		route api /api/* 1m
	}
	reverse_proxy %s`, strings.TrimPrefix(up.URL, "http://")))

	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", c.HTTPPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n", c.HTTPPort)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the upgrade answer: %v", err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101; X-Cache=%q Cache-Status=%q", res.StatusCode, res.Header.Get("X-Cache"), res.Header.Get("Cache-Status"))
	}
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 4)
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("echo over the upgraded connection: %q, %v", echo, err)
	}
}
