// CRDs the test cluster installs from their Go modules (make cluster): Gateway API (standard
// channel; KubeRay's incremental upgrade creates Gateways and HTTPRoutes). Nothing here is compiled.
module local/cluster/crds

go 1.25.0

require sigs.k8s.io/gateway-api v1.6.1
