"""The Lookaside balancer: grpc.lb.v1.LoadBalancer and the registration API
over the Redis registry."""
