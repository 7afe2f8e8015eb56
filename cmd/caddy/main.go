// Command caddy is a Caddy binary with the redis_cache module built in, so the
// example config runs with `go run ./cmd/caddy run --config Caddyfile.example`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-redis-cache/caddy-redis-cache"
)

func main() {
	caddycmd.Main()
}
