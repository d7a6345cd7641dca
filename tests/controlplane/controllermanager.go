package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// defaultControllers the control plane runs: what a namespace deletion,
// garbage collection and ServiceAccount tokens need. Node, endpoint and
// workload controllers stay off unless asked for (--controllers): without a
// node there is nothing for them to do.
const defaultControllers = "namespace-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller"

// startControllerManager runs the real kube-controller-manager (from the
// same k8s.io/kubernetes module as the apiserver) in this process, as the
// admin identity, until ctx ends. It is set up the way the module's own
// in-process test server sets it up (cmd/kube-controller-manager/app/testing):
// its own component registry, so it does not clash with the apiserver's.
// Errors after start-up arrive on the returned channel.
func startControllerManager(ctx context.Context, kubeconfig, saKey, rootCA, controllers string) (<-chan error, error) {
	// Two servers in one process: leave the apiserver's logging set-up be.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	featureGate := utilfeature.DefaultMutableFeatureGate.DeepCopy()
	effectiveVersion := utilcompatibility.DefaultBuildEffectiveVersion()
	registry := compatibility.NewComponentGlobalsRegistry()
	if err := registry.Register(compatibility.DefaultKubeComponent, effectiveVersion, featureGate); err != nil {
		return nil, err
	}
	s.ComponentGlobalsRegistry = registry

	all, disabled, aliases := kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + controllers,
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + saKey,
		"--root-ca-file=" + rootCA,
		// A test cluster: namespaces should go quickly once empty.
		"--concurrent-namespace-syncs=4",
	}
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("controller-manager flags: %w", err)
	}
	s.ParsedFlags = &named
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	config, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return nil, fmt.Errorf("controller-manager config: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- kcm.Run(ctx, config.Complete()) }()
	return done, nil
}
