// Command pause is the pod sandbox's process, as Kubernetes' own pause
// (build/pause/linux/pause.c): it holds the pod's namespaces, reaps
// orphaned children when it is the pod's init process, and exits on
// SIGINT or SIGTERM. Built static by ../build.sh for the node's sandbox
// image; there is no registry to pull registry.k8s.io/pause from.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
