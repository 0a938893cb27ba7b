// Command go-backend is a Lookaside backend written with stock grpc-go only.
//
// It serves routeguide's GetFeature (answering with its own name) and
// grpc.health.v1, registers itself in a pool through Lookaside's Registry
// API (lookaside.registry.v1), keeps its lease with heartbeats, and on
// SIGTERM or SIGINT stops as a Kubernetes pod does: health NOT_SERVING and
// Drain (out of every list, lease kept), a grace wait, Deregister, then a
// graceful stop of the server. See docs/backends.md.
//
//	go-backend -balancer 127.0.0.1:50051 -pool routeguide -listen 127.0.0.1:0
//
// The registration token, when the balancer asks for one, comes from
// -token-file or LOOKASIDE_REGISTRATION_TOKEN and is sent as
// "authorization: Bearer <token>" on every Registry call.
package main

import (
	"context"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	registrypb "lookaside.example/go-backend/registrypb"
	routeguidepb "lookaside.example/go-backend/routeguidepb"
)

const rpcTimeout = 5 * time.Second

// routeGuide answers GetFeature with the backend's name; the other three
// routeguide methods stay unimplemented.
type routeGuide struct {
	routeguidepb.UnimplementedRouteGuideServer
	name string
}

func (r *routeGuide) GetFeature(ctx context.Context, p *routeguidepb.Point) (*routeguidepb.Feature, error) {
	return &routeguidepb.Feature{Name: r.name, Location: p}, nil
}

// lease is this backend's registration: what Register returned.
type lease struct {
	backendID, leaseID string
	interval           time.Duration
}

// registrar makes the Registry calls, each with the token as metadata.
type registrar struct {
	client registrypb.RegistryClient
	token  string
	req    *registrypb.RegisterRequest

	mu  sync.Mutex
	cur lease
}

func (r *registrar) ctx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	if r.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+r.token)
	}
	return ctx, cancel
}

func (r *registrar) current() lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// fatal: refusals that retrying cannot fix (a bad argument, a missing or
// wrong token).
func fatal(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return false
}

// leaseLost: heartbeat refusals after which the backend registers again.
func leaseLost(err error) bool {
	switch status.Code(err) {
	case codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied:
		return true
	}
	return false
}

// register calls Register until it succeeds, with a jittered backoff (1 s,
// x1.6, at most 30 s) while no balancer answers. A refusal that retrying
// cannot fix is returned when giveUp is set (the first registration).
func (r *registrar) register(stop <-chan struct{}, giveUp bool) error {
	backoff := time.Second
	for {
		select {
		case <-stop:
			return fmt.Errorf("stopped before registering")
		default:
		}
		ctx, cancel := r.ctx()
		resp, err := r.client.Register(ctx, r.req)
		cancel()
		if err == nil {
			interval := resp.GetHeartbeatInterval().AsDuration()
			if interval < 100*time.Millisecond {
				interval = 100 * time.Millisecond
			}
			r.mu.Lock()
			r.cur = lease{resp.GetBackendId(), resp.GetLeaseId(), interval}
			r.mu.Unlock()
			log.Printf("registered pool=%s backend=%s address=%s heartbeat=%s",
				r.req.GetPool(), resp.GetBackendId(), resp.GetAddress(), interval)
			return nil
		}
		if giveUp && fatal(err) {
			return err
		}
		wait := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		log.Printf("pool=%s: registration failed (%s: %s); next try in %s",
			r.req.GetPool(), status.Code(err), status.Convert(err).Message(), wait.Round(time.Millisecond))
		select {
		case <-stop:
			return fmt.Errorf("stopped before registering")
		case <-time.After(wait):
		}
		if backoff = time.Duration(float64(backoff) * 1.6); backoff > 30*time.Second {
			backoff = 30 * time.Second
		}
	}
}

// keep heartbeats every interval the balancer gave; a lost lease means
// registering again; a failed heartbeat is retried sooner.
func (r *registrar) keep(stop <-chan struct{}) {
	wait := r.current().interval
	for {
		select {
		case <-stop:
			return
		case <-time.After(wait):
		}
		l := r.current()
		ctx, cancel := r.ctx()
		_, err := r.client.Heartbeat(ctx, &registrypb.HeartbeatRequest{
			Pool: r.req.GetPool(), BackendId: l.backendID, LeaseId: l.leaseID,
		})
		cancel()
		switch {
		case err == nil:
			wait = l.interval
		case leaseLost(err):
			log.Printf("pool=%s: lease lost (%s); registering again", r.req.GetPool(), status.Code(err))
			if r.register(stop, false) != nil {
				return
			}
			wait = r.current().interval
		default:
			log.Printf("pool=%s: heartbeat failed (%s); retrying", r.req.GetPool(), status.Code(err))
			wait = l.interval / 2
		}
	}
}

func (r *registrar) drain() error {
	l := r.current()
	ctx, cancel := r.ctx()
	defer cancel()
	_, err := r.client.Drain(ctx, &registrypb.DrainRequest{
		Pool: r.req.GetPool(), BackendId: l.backendID, LeaseId: l.leaseID,
	})
	return err
}

func (r *registrar) deregister() error {
	l := r.current()
	ctx, cancel := r.ctx()
	defer cancel()
	_, err := r.client.Deregister(ctx, &registrypb.DeregisterRequest{
		Pool: r.req.GetPool(), BackendId: l.backendID, LeaseId: l.leaseID,
	})
	return err
}

func token(file string) (string, error) {
	if file == "" {
		return os.Getenv("LOOKASIDE_REGISTRATION_TOKEN"), nil
	}
	raw, err := ioutil.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("-token-file: %v", err)
	}
	return strings.TrimSpace(string(raw)), nil
}

func main() {
	balancer := flag.String("balancer", "127.0.0.1:50051", "the balancer's Registry API, host:port")
	pool := flag.String("pool", "routeguide", "the pool to join")
	listen := flag.String("listen", "127.0.0.1:0", "where to serve, host:port (port 0: any free one)")
	advertise := flag.String("advertise-host", "", "the host clients dial (empty: the address the registration comes from)")
	name := flag.String("name", "", "the name GetFeature answers with (default go-backend:<port>)")
	tokenFile := flag.String("token-file", "", "file with the registration token (default: env LOOKASIDE_REGISTRATION_TOKEN)")
	leaseTTL := flag.Duration("lease-ttl", 0, "the lease to ask for, 1s..1h (0: the pool's default); heartbeats come every third of it")
	drainDelay := flag.Duration("drain-delay", 2*time.Second, "after Drain, how long clients get to pick up the new list before Deregister")
	grace := flag.Duration("grace", 10*time.Second, "how long calls still running get before the server stops hard")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	secret, err := token(*tokenFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-backend: %v\n", err)
		os.Exit(2)
	}

	// The stop signals are caught before anything serves.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-backend: -listen %s: %v\n", *listen, err)
		os.Exit(2)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	if *name == "" {
		*name = "go-backend:" + strconv.Itoa(port)
	}

	server := grpc.NewServer()
	routeguidepb.RegisterRouteGuideServer(server, &routeGuide{name: *name})
	// The balancer health-checks every backend it lists (grpc.health.v1
	// Check on the pool's service name, "" by default): without this the
	// backend is marked unhealthy within seconds and gets no calls.
	healthServer := health.NewServer()
	healthpb.RegisterHealthServer(server, healthServer)
	healthServer.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go func() {
		if err := server.Serve(lis); err != nil {
			log.Fatalf("serve: %v", err)
		}
	}()

	conn, err := grpc.Dial(*balancer, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-backend: -balancer %s: %v\n", *balancer, err)
		os.Exit(2)
	}
	defer conn.Close()
	reg := &registrar{
		client: registrypb.NewRegistryClient(conn),
		token:  secret,
		req:    &registrypb.RegisterRequest{Pool: *pool, Host: *advertise, Port: int32(port)},
	}
	if *leaseTTL > 0 {
		reg.req.LeaseTtl = durationpb.New(*leaseTTL)
	}

	stop := make(chan struct{})
	registered := make(chan error, 1)
	go func() { registered <- reg.register(stop, true) }()
	select {
	case err := <-registered:
		if err != nil {
			fmt.Fprintf(os.Stderr, "go-backend: registration in pool %q refused: %s: %s\n",
				*pool, status.Code(err), status.Convert(err).Message())
			server.Stop()
			os.Exit(1)
		}
	case <-signals:
		close(stop)
		server.Stop()
		return
	}
	kept := make(chan struct{})
	go func() { reg.keep(stop); close(kept) }()
	fmt.Printf("go-backend serving port=%d pool=%s backend=%s name=%s\n",
		port, *pool, reg.current().backendID, *name)

	sig := <-signals
	log.Printf("%s: draining, then deregistering", sig)
	// 1. Out of every list: the balancer's next probe sees NOT_SERVING, and
	//    Drain removes the backend at once while its lease stays.
	healthServer.Shutdown()
	if err := reg.drain(); err != nil {
		log.Printf("drain failed (%v); deregistering", err)
	} else {
		// 2. Clients get the list without this backend; calls they already
		//    sent here go on. A second signal cuts the wait short.
		select {
		case <-time.After(*drainDelay):
		case <-signals:
		}
	}
	// 3. Leave the pool (heartbeats end first, so none re-registers).
	close(stop)
	<-kept
	if err := reg.deregister(); err != nil {
		log.Printf("deregistration failed: %v", err)
	} else {
		log.Printf("deregistered pool=%s backend=%s", *pool, reg.current().backendID)
	}
	// 4. Stop serving: running calls get up to -grace.
	done := make(chan struct{})
	go func() { server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(*grace):
		server.Stop()
	}
	log.Printf("stopped")
}
