package rediscache

import (
	"fmt"
	"runtime/debug"

	"go.uber.org/zap"
)

// goSafe runs fn in a new goroutine that logs a panic instead of letting it
// take the whole Caddy process, and every site on it, down.
func goSafe(logger *zap.Logger, name string, fn func()) {
	go func() {
		defer recoverAndLog(logger, name)
		fn()
	}()
}

// recoverAndLog is deferred at the top of every goroutine and callback the
// module starts (timers included).
func recoverAndLog(logger *zap.Logger, name string) {
	v := recover()
	if v == nil {
		return
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	logger.Error("recovered from panic in background work",
		zap.String("goroutine", name),
		zap.String("panic", fmt.Sprint(v)),
		zap.ByteString("stack", debug.Stack()))
}
