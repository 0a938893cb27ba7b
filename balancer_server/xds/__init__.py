"""xDS (ADS, state of the world) from the same registry as grpclb: stock
gRPC clients on `xds:///POOL` get each pool's Listener, RouteConfiguration,
Cluster and ClusterLoadAssignment from the balancer's own port."""
