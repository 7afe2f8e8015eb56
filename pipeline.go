package rediscache

import (
	"context"
	"errors"
	"runtime"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// autoPipeline merges the lookups and writes of concurrent requests into
// shared Redis pipelines: under load, one round trip (and one pair of
// syscalls) serves many requests instead of one each. A lone request pays
// only a channel hand-off.
type autoPipeline struct {
	client  redis.Cmdable
	timeout time.Duration
	queue   chan *pipeOp
	quit    chan struct{}
}

// pipeOp is one command waiting for a pipeline.
type pipeOp struct {
	queue func(ctx context.Context, p redis.Pipeliner) redis.Cmder
	cmd   redis.Cmder
	done  chan struct{}
}

// Two workers, measured against one and four with wrk on two cores: one
// serializes the reads of large values, four split small lookups into
// one-command pipelines.
const (
	pipelineWorkers  = 2
	pipelineMaxBatch = 128
)

var errStoreClosed = errors.New("cache store closed")

func newAutoPipeline(client redis.Cmdable, timeout time.Duration) *autoPipeline {
	ap := &autoPipeline{
		client:  client,
		timeout: timeout,
		queue:   make(chan *pipeOp, 4096),
		quit:    make(chan struct{}),
	}
	for range pipelineWorkers {
		go ap.supervise()
	}
	return ap
}

// supervise runs a worker, and a new one should it panic: every lookup
// depends on the workers, so one lost to a panic must not stay lost (nor
// take Caddy down).
func (ap *autoPipeline) supervise() {
	for !ap.workRecovering() {
	}
}

// workRecovering runs the worker loop and reports whether it ended
// because the pipeline closed, rather than with a panic.
func (ap *autoPipeline) workRecovering() (closed bool) {
	defer recoverAndLog(caddy.Log().Named("http.handlers.redis_cache"), "autopipeline worker")
	ap.work()
	return true
}

func (ap *autoPipeline) close() { close(ap.quit) }

// do queues one command and waits for its pipeline. The store timeout
// applies to the pipeline's round trip (see exec), not to the wait for a
// worker: a burst of requests on a cold or busy Caddy queues here without
// Redis being slow, and must not turn into failed lookups and requests
// that skip the cache. A wait past queueBound is a failure all the same.
func (ap *autoPipeline) do(queue func(context.Context, redis.Pipeliner) redis.Cmder) (redis.Cmder, error) {
	op := &pipeOp{queue: queue, done: make(chan struct{})}
	bound := time.NewTimer(ap.queueBound())
	defer bound.Stop()
	select {
	case ap.queue <- op:
	case <-bound.C:
		return nil, context.DeadlineExceeded
	case <-ap.quit:
		return nil, errStoreClosed
	}
	select {
	case <-op.done:
		return op.cmd, op.cmd.Err()
	case <-bound.C:
		return nil, context.DeadlineExceeded
	}
}

// queueBound is the longest a command waits for its pipeline, round trip
// included.
func (ap *autoPipeline) queueBound() time.Duration {
	return max(5*ap.timeout, 500*time.Millisecond)
}

func (ap *autoPipeline) work() {
	batch := make([]*pipeOp, 0, pipelineMaxBatch)
	for {
		select {
		case <-ap.quit:
			return
		case op := <-ap.queue:
			batch = append(batch[:0], op)
		}
		if len(ap.queue) == 0 {
			// Let the request goroutines that are already runnable queue
			// their commands first: on a busy machine that turns many
			// one-command round trips into one deeper pipeline, at the cost
			// of one scheduling round for a lone request.
			runtime.Gosched()
		}
	drain:
		for len(batch) < pipelineMaxBatch {
			select {
			case op := <-ap.queue:
				batch = append(batch, op)
			default:
				break drain
			}
		}
		ap.exec(batch)
	}
}

func (ap *autoPipeline) exec(batch []*pipeOp) {
	ctx, cancel := context.WithTimeout(context.Background(), ap.timeout)
	defer cancel()
	pipe := ap.client.Pipeline()
	for _, op := range batch {
		op.cmd = op.queue(ctx, pipe)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for _, op := range batch {
		close(op.done)
	}
}
