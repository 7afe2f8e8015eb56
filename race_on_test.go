//go:build race

package rediscache

// raceEnabled reports whether the tests run with -race; caddyBinary then
// builds the Caddy binary with -race as well.
const raceEnabled = true
