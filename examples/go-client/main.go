// Command go-client calls a Lookaside pool with stock grpc-go: the dns
// resolver finds the balancer through the SRV records `lookaside dns`
// serves, and grpc-go's own grpclb policy balances the calls over the
// balancer's list. Nothing of Lookaside's is linked in. See docs/backends.md.
//
//	go-client -target dns://127.0.0.1:8053/routeguide.lookaside.test:50051 -n 30
//
// Each call's answer (routeguide GetFeature: the feature's name, which the
// test backends set to their own name) is printed on a line of its own, or
// "error <code> <message>".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/grpclb" // the grpclb policy; SRV lookups on
	"google.golang.org/grpc/status"

	routeguidepb "lookaside.example/go-client/routeguidepb"
)

func main() {
	target := flag.String("target", "", "dns://DNS_HOST:DNS_PORT/<pool>.<zone>:<port>")
	n := flag.Int("n", 10, "calls to make")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "go-client: -target is required, e.g. dns://127.0.0.1:8053/routeguide.lookaside.test:50051")
		os.Exit(2)
	}
	conn, err := grpc.Dial(*target,
		grpc.WithInsecure(), // or grpc.WithTransportCredentials(credentials.NewTLS(...))
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"grpclb":{}}]}`))
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-client: -target %s: %v\n", *target, err)
		os.Exit(2)
	}
	defer conn.Close()
	client := routeguidepb.NewRouteGuideClient(conn)
	failed := 0
	for i := 0; i < *n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		// Wait for ready: the first call waits for the balancer's list
		// instead of failing while it is on its way.
		feature, err := client.GetFeature(ctx, &routeguidepb.Point{Latitude: 1, Longitude: 2}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			failed++
			fmt.Printf("error %s %s\n", status.Code(err), status.Convert(err).Message())
			continue
		}
		fmt.Println(feature.GetName())
	}
	if failed > 0 {
		os.Exit(1)
	}
}
