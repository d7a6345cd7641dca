//go:build tools

package main

// The node's binaries, built by build.sh from this module's
// k8s.io/kubernetes so they match the apiserver's version.
import (
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
