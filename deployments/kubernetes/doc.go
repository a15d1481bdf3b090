// Package kubernetes holds no runtime code. It is a separate Go module so that
// the Kubernetes and kustomize libraries its tests need stay out of kpush's own
// go.mod.
//
// The tests render every kustomize overlay under overlays/ exactly as
// `kubectl apply -k` would, decode each object strictly into the k8s.io/api
// types (an unknown or misspelled field fails), and check what an operator
// would notice if it broke: probes that hit real admin endpoints, a grace
// period long enough for the drain, selectors that select the pods, an HPA
// that targets the Deployment, a config that kpush itself accepts, a
// Dockerfile that builds the binary the way `make build` does, and alert
// rules and a dashboard that only use metrics kpush exports.
//
// Run them with:
//
//	cd deployments/kubernetes && go test ./...
package kubernetes
