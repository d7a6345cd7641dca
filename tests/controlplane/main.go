// Command controlplane runs a real, minimal Kubernetes control plane for
// dbgrant's tests: an embedded etcd (go.etcd.io/etcd/server/v3/embed) and the
// real kube-apiserver (k8s.io/kubernetes/cmd/kube-apiserver/app) in one
// process, bound to 127.0.0.1 on random free ports.
//
// Two identities:
//
//   - admin: user "dbgrant-admin", group system:masters, from a static token
//     file;
//   - operator: the ServiceAccount <ns>/<sa> itself, with a bound token from
//     the TokenRequest API kept fresh in <dir>/operator.token as the kubelet
//     keeps a pod's (see tokens.go); its kubeconfig names that file, so RBAC
//     bindings to the ServiceAccount (for instance the ones in the Helm
//     chart) apply to it for real.
//
// Authorization is RBAC. The real kube-controller-manager runs in the same
// process (namespace, garbage collector, ServiceAccount and token
// controllers): deleted namespaces are emptied and go away, owned objects
// are collected.
//
// With --dir and --keep-data it restarts on the data of its last run: the
// same etcd data, certificates, ServiceAccount key, admin token and ports,
// so clients (and their watches' resourceVersions) carry on as across a
// real apiserver restart.
//
// Once /readyz answers ok, one line of JSON describing the control plane is
// printed on stdout (and written to <dir>/controlplane.json). The apiserver's
// and etcd's logs go to <dir>/apiserver.log and <dir>/etcd.log.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"dbgrant.io/tests/controlplane/cpuprofile"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const adminUser = "dbgrant-admin"

// stopping is set once a shutdown was asked for (signal, stdin EOF).
var stopping atomic.Bool

// Info is what the control plane prints on stdout once it is ready.
type Info struct {
	Dir                    string `json:"dir"`
	Server                 string `json:"server"`
	CAFile                 string `json:"caFile"`
	AdminKubeconfig        string `json:"adminKubeconfig"`
	AdminUser              string `json:"adminUser"`
	AdminToken             string `json:"adminToken"`
	OperatorKubeconfig     string `json:"operatorKubeconfig"`
	OperatorNamespace      string `json:"operatorNamespace"`
	OperatorServiceAccount string `json:"operatorServiceAccount"`
	OperatorUser           string `json:"operatorUser"`
	OperatorTokenFile      string `json:"operatorTokenFile"`
	// Node is set with --node.
	Node         *NodeInfo `json:"node,omitempty"`
	EtcdEndpoint string    `json:"etcdEndpoint"`
	PID          int       `json:"pid"`
	ReadySeconds float64   `json:"readySeconds"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

var (
	// terse messages for the harness; fd 2 itself is redirected to apiserver.log
	errOut io.Writer = os.Stderr
	// the JSON line; fd 1 itself is redirected to apiserver.log
	jsonOut io.Writer = os.Stdout
)

func logf(format string, args ...any) {
	fmt.Fprintf(errOut, "controlplane: "+format+"\n", args...)
}

// logTail copies the last lines of a log file to stderr, since the directory
// holding it is usually removed on exit.
func logTail(path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(errOut, "controlplane: last lines of %s:\n", filepath.Base(path))
	for _, l := range lines {
		fmt.Fprintf(errOut, "  | %s\n", l)
	}
}

func main() {
	os.Exit(run())
}

func run() int {
	if len(os.Args) > 1 && os.Args[1] == "profile-summary" {
		return cpuprofile.Command(os.Args[2:])
	}
	start := time.Now()
	fs := flag.NewFlagSet("controlplane", flag.ContinueOnError)
	dirFlag := fs.String("dir", "", "working directory for etcd data, certificates, kubeconfigs and logs (created if missing, kept on exit); default: a new temporary directory, removed on exit unless --keep")
	keep := fs.Bool("keep", false, "keep the temporary directory on exit")
	opNS := fs.String("operator-namespace", "dbgrant-system", "namespace of the operator's ServiceAccount identity")
	opSA := fs.String("operator-serviceaccount", "dbgrant", "name of the operator's ServiceAccount identity")
	exitOnEOF := fs.Bool("exit-on-stdin-eof", false, "shut down when standard input reaches EOF (so a dead test harness does not leak the control plane)")
	readyTimeout := fs.Duration("ready-timeout", 180*time.Second, "how long to wait for etcd and the apiserver to become ready")
	keepData := fs.Bool("keep-data", false, "with --dir: restart on the etcd data, certificates, ServiceAccount key, admin token and ports of the last run in that directory (a fresh start when there is none)")
	tokenTTL := fs.Duration("operator-token-ttl", time.Hour, "lifetime of the operator's ServiceAccount tokens (the TokenRequest API's minimum is 10m)")
	tokenRefresh := fs.Duration("operator-token-refresh", 0, "how often to replace the operator's token; 0: at 80% of its lifetime, as the kubelet does")
	withKCM := fs.Bool("controller-manager", true, "also run kube-controller-manager (namespace, garbage collector, ServiceAccount and token controllers)")
	controllers := fs.String("controllers", "", "kube-controller-manager's --controllers (default: the namespace, garbage collector, ServiceAccount and token controllers; with --node every controller on by default)")
	withNode := fs.Bool("node", false, "also run a node: the kubelet and kube-scheduler from tools beside this binary, Debian's containerd and runc, CNI's bridge plugin (needs root)")
	var nodeImages multiFlag
	fs.Var(&nodeImages, "node-image", "with --node: package a static binary as an image and import it, REF=PATH (repeatable)")
	var extra multiFlag
	fs.Var(&extra, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--v=4 (repeatable; later flags win)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: controlplane [flags]\n\nRuns etcd + kube-apiserver on 127.0.0.1 and prints one JSON line when ready.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		logf("unexpected arguments: %v", fs.Args())
		return 2
	}
	if *keepData && *dirFlag == "" {
		logf("--keep-data needs --dir")
		return 2
	}
	if *keepData && *withNode {
		logf("--keep-data and --node do not go together")
		return 2
	}
	var images []nodeImage
	for _, v := range nodeImages {
		img, err := parseNodeImage(v)
		if err != nil {
			logf("%v", err)
			return 2
		}
		images = append(images, img)
	}
	if *controllers == "" {
		*controllers = defaultControllers
		if *withNode {
			*controllers = "*"
		}
	}
	if *withNode {
		// before anything is started: say what is missing, precisely
		if err := nodePrerequisites(); err != nil {
			logf("--node: %v", err)
			return 1
		}
	}

	// Own signal handling. kube-apiserver's command installs its own handler
	// for SIGINT/SIGTERM too (first signal: graceful stop; second: exit 1).
	rawSigs := make(chan os.Signal, 2)
	signal.Notify(rawSigs, syscall.SIGINT, syscall.SIGTERM)
	sigs := make(chan os.Signal, 2)
	go func() {
		for s := range rawSigs {
			stopping.Store(true)
			sigs <- s
		}
	}()

	dir := *dirFlag
	removeDir := false
	if dir == "" {
		d, err := os.MkdirTemp("", "dbgrant-controlplane-")
		if err != nil {
			logf("%v", err)
			return 1
		}
		dir = d
		removeDir = !*keep
	} else {
		d, err := filepath.Abs(dir)
		if err != nil {
			logf("%v", err)
			return 1
		}
		dir = d
		if err := os.MkdirAll(dir, 0o755); err != nil {
			logf("%v", err)
			return 1
		}
		// state from an earlier run would not match the new ports
		stale := []string{"controlplane.json"}
		if !*keepData {
			stale = append(stale, "etcd", "certs", stateFile, "sa.key", "operator.token")
		}
		for _, p := range stale {
			_ = os.RemoveAll(filepath.Join(dir, p))
		}
	}
	cleanupDir := func() {
		if removeDir {
			if err := os.RemoveAll(dir); err != nil {
				logf("removing %s: %v", dir, err)
			}
		}
	}

	logFlags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if *keepData {
		logFlags = os.O_CREATE | os.O_WRONLY | os.O_APPEND // one log across restarts
	}
	apiLog, err := os.OpenFile(filepath.Join(dir, "apiserver.log"), logFlags, 0o644)
	if err != nil {
		logf("%v", err)
		cleanupDir()
		return 1
	}
	// Keep stdout for the JSON line and stderr for terse messages; send
	// everything else written to fd 1 and fd 2 (klog, cobra, panics in
	// library goroutines) to apiserver.log.
	if err := redirectStdio(apiLog); err != nil {
		logf("redirecting output: %v", err)
		cleanupDir()
		return 1
	}

	// kube-apiserver exits through klog.Fatal when, for instance, a post-start
	// hook fails (also when it is stopped while still starting up): still
	// remove the temporary directory then.
	klog.OsExit = func(code int) {
		if stopping.Load() {
			logf("apiserver aborted its start-up")
			code = 1
		} else {
			logf("apiserver exited fatally (code %d)", code)
			logTail(filepath.Join(dir, "apiserver.log"), 15)
		}
		cleanupDir()
		os.Exit(code)
	}

	opts := options{opNS: *opNS, opSA: *opSA, exitOnEOF: *exitOnEOF, keepData: *keepData, withKCM: *withKCM, controllers: *controllers, node: *withNode, nodeImages: images,
		readyTimeout: *readyTimeout, tokenTTL: *tokenTTL, tokenRefresh: *tokenRefresh, extra: extra}
	code := serve(dir, opts, sigs, start)
	cleanupDir()
	return code
}

func redirectStdio(logFile *os.File) error {
	outFd, err := syscall.Dup(1)
	if err != nil {
		return err
	}
	errFd, err := syscall.Dup(2)
	if err != nil {
		return err
	}
	syscall.CloseOnExec(outFd)
	syscall.CloseOnExec(errFd)
	jsonOut = os.NewFile(uintptr(outFd), "stdout")
	errOut = os.NewFile(uintptr(errFd), "stderr")
	if err := syscall.Dup3(int(logFile.Fd()), 1, 0); err != nil {
		return err
	}
	return syscall.Dup3(int(logFile.Fd()), 2, 0)
}

// options are the flags serve needs.
type options struct {
	opNS, opSA             string
	exitOnEOF, keepData    bool
	withKCM                bool
	controllers            string
	node                   bool
	nodeImages             []nodeImage
	readyTimeout           time.Duration
	tokenTTL, tokenRefresh time.Duration
	extra                  []string
}

// stateFile holds what a --keep-data restart reuses besides the etcd data,
// certificates and ServiceAccount key on disk.
const stateFile = "state.json"

// state is the content of stateFile.
type state struct {
	EtcdClientPort int    `json:"etcdClientPort"`
	EtcdPeerPort   int    `json:"etcdPeerPort"`
	APIServerPort  int    `json:"apiserverPort"`
	AdminToken     string `json:"adminToken"`
}

// loadState reads the state of the last run in dir; nil when there is none.
func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", stateFile, err)
	}
	if st.EtcdClientPort == 0 || st.EtcdPeerPort == 0 || st.APIServerPort == 0 || st.AdminToken == "" {
		return nil, fmt.Errorf("%s is incomplete", stateFile)
	}
	return &st, nil
}

func serve(dir string, o options, sigs chan os.Signal, start time.Time) int {
	deadline := time.Now().Add(o.readyTimeout)

	var prev *state
	if o.keepData {
		st, err := loadState(dir)
		if err != nil {
			logf("--keep-data: %v", err)
			return 1
		}
		prev = st
	}

	// --- etcd ---------------------------------------------------------------
	var etcd *embed.Etcd
	var etcdURL string
	var etcdPorts []int
	for attempt := 1; ; attempt++ {
		var err error
		if prev != nil {
			// the same ports: the member's peer URL is in its data
			etcdPorts = []int{prev.EtcdClientPort, prev.EtcdPeerPort}
		} else if etcdPorts, err = freePorts(2); err != nil {
			logf("finding free ports: %v", err)
			return 1
		}
		etcd, etcdURL, err = startEtcd(dir, etcdPorts[0], etcdPorts[1], prev != nil, time.Until(deadline))
		if err == nil {
			break
		}
		if prev != nil || attempt >= 3 || time.Now().After(deadline) {
			logf("starting etcd: %v", err)
			logTail(filepath.Join(dir, "etcd.log"), 15)
			return 1
		}
	}
	defer func() {
		etcd.Close()
	}()

	// --- credentials ----------------------------------------------------------
	saKey := filepath.Join(dir, "sa.key")
	if _, err := os.Stat(saKey); prev == nil || err != nil {
		if err := writeRSAKey(saKey); err != nil {
			logf("service-account key: %v", err)
			return 1
		}
	}
	adminToken := randomToken()
	if prev != nil {
		adminToken = prev.AdminToken
	}
	opUser := fmt.Sprintf("system:serviceaccount:%s:%s", o.opNS, o.opSA)
	tokenFile := filepath.Join(dir, "tokens.csv")
	// The node's identities, as kubeadm gives them: the kubelet is
	// system:node:<name> in system:nodes (the Node authorizer and the
	// NodeRestriction admission plugin apply), the scheduler
	// system:kube-scheduler (its bootstrap RBAC role).
	nodeToken, schedulerToken := randomToken(), randomToken()
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", adminToken, adminUser, "dbgrant-admin-uid")
	if o.node {
		tokens += fmt.Sprintf("%s,system:node:%s,%s,\"system:nodes\"\n", nodeToken, nodeName, "dbgrant-node-uid")
		tokens += fmt.Sprintf("%s,system:kube-scheduler,%s\n", schedulerToken, "dbgrant-scheduler-uid")
	}
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		logf("%v", err)
		return 1
	}

	// --- kube-apiserver -----------------------------------------------------
	var port int
	if prev != nil {
		port = prev.APIServerPort
	} else {
		ports, err := freePorts(1)
		if err != nil {
			logf("finding free port: %v", err)
			return 1
		}
		port = ports[0]
	}
	st := state{EtcdClientPort: etcdPorts[0], EtcdPeerPort: etcdPorts[1], APIServerPort: port, AdminToken: adminToken}
	if b, err := json.Marshal(st); err != nil {
		logf("%v", err)
		return 1
	} else if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		logf("%v", err)
		return 1
	}
	certDir := filepath.Join(dir, "certs")
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + certDir,
		"--authorization-mode=Node,RBAC",
		"--token-auth-file=" + tokenFile,
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--endpoint-reconciler-type=none",
		// Close open watches when stopping, as a managed apiserver does;
		// otherwise net/http's shutdown waits its full minute for them.
		"--shutdown-watch-termination-grace-period=5s",
	}
	args = append(args, o.extra...)

	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(args)
	cmd.SetOut(os.Stdout) // fd 1, redirected to apiserver.log
	cmd.SetErr(os.Stderr) // fd 2, redirected to apiserver.log
	apiDone := make(chan error, 1)
	go func() { apiDone <- cmd.Execute() }()

	// Shut down by signalling ourselves, so the apiserver's own signal
	// context is cancelled and it stops gracefully.
	var selfStop atomic.Bool
	stopSelf := func() {
		selfStop.Store(true)
		stopping.Store(true)
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
	if o.exitOnEOF {
		go func() {
			cpuprofile.ReadCommands(os.Stdin, logf) // profiling commands, until EOF
			logf("stdin closed, stopping")
			stopSelf()
		}()
	}

	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	caFile := filepath.Join(certDir, "apiserver.crt")
	readyCtx, cancelReady := context.WithDeadline(context.Background(), deadline)
	readyErr := make(chan error, 1)
	go func() { readyErr <- waitReady(readyCtx, server, caFile, adminToken) }()

	var stopped bool
	select {
	case err := <-readyErr:
		cancelReady()
		if err != nil {
			logf("apiserver not ready: %v", err)
			logTail(filepath.Join(dir, "apiserver.log"), 15)
			stopSelf()
			waitAPIServer(apiDone)
			return 1
		}
	case err := <-apiDone:
		cancelReady()
		logf("apiserver exited before becoming ready: %v", err)
		logTail(filepath.Join(dir, "apiserver.log"), 15)
		return 1
	case s := <-sigs:
		cancelReady()
		if !selfStop.Load() {
			logf("got %v before ready, stopping", s)
		}
		stopped = true
	}
	if stopped {
		waitAPIServer(apiDone)
		return 1
	}

	info := Info{
		Dir:                    dir,
		Server:                 server,
		CAFile:                 caFile,
		AdminKubeconfig:        filepath.Join(dir, "admin.kubeconfig"),
		AdminUser:              adminUser,
		AdminToken:             adminToken,
		OperatorKubeconfig:     filepath.Join(dir, "operator.kubeconfig"),
		OperatorNamespace:      o.opNS,
		OperatorServiceAccount: o.opSA,
		OperatorUser:           opUser,
		EtcdEndpoint:           etcdURL,
		PID:                    os.Getpid(),
		ReadySeconds:           float64(time.Since(start).Milliseconds()) / 1000,
	}
	tokenCtx, cancelTokens := context.WithCancel(context.Background())
	defer cancelTokens()
	ca, err := os.ReadFile(caFile)
	if err == nil {
		err = writeKubeconfig(info.AdminKubeconfig, server, ca, adminUser, clientcmdapi.AuthInfo{Token: adminToken}, "default")
	}
	if err == nil {
		info.OperatorTokenFile, err = startOperatorTokens(tokenCtx, info.AdminKubeconfig, dir, o.opNS, o.opSA, o.tokenTTL, o.tokenRefresh)
	}
	if err == nil {
		err = writeKubeconfig(info.OperatorKubeconfig, server, ca, opUser, clientcmdapi.AuthInfo{TokenFile: info.OperatorTokenFile}, o.opNS)
	}
	if err != nil {
		logf("%v", err)
		stopSelf()
		waitAPIServer(apiDone)
		return 1
	}
	// The apiserver's graceful stop waits for its clients' requests: stop
	// the in-process clients (node, controller-manager, token refresher)
	// first.
	kcmCtx, cancelKCM := context.WithCancel(context.Background())
	defer cancelKCM()
	kcmStopped := make(chan struct{})
	var nd *node
	stopClients := func() {
		if nd != nil {
			nd.stop()
		}
		cancelTokens()
		cancelKCM()
		select {
		case <-kcmStopped:
		case <-time.After(15 * time.Second):
			logf("kube-controller-manager did not stop within 15s")
		}
	}
	fail := func(what string, err error) int {
		logf("%s: %v", what, err)
		stopClients()
		stopSelf()
		waitAPIServer(apiDone)
		return 1
	}
	if !o.withKCM {
		close(kcmStopped)
	} else if kcmDone, err := startControllerManager(kcmCtx, info.AdminKubeconfig, saKey, caFile, o.controllers); err != nil {
		close(kcmStopped)
		return fail("kube-controller-manager", err)
	} else {
		go func() {
			if err := <-kcmDone; err != nil && !stopping.Load() {
				logf("kube-controller-manager exited: %v", err)
			}
			close(kcmStopped)
		}()
	}
	if o.node {
		nodeKC, schedKC := filepath.Join(dir, "node.kubeconfig"), filepath.Join(dir, "scheduler.kubeconfig")
		err := writeKubeconfig(nodeKC, server, ca, "system:node:"+nodeName, clientcmdapi.AuthInfo{Token: nodeToken}, "default")
		if err == nil {
			err = writeKubeconfig(schedKC, server, ca, "system:kube-scheduler", clientcmdapi.AuthInfo{Token: schedulerToken}, "default")
		}
		if err == nil {
			exe, _ := os.Executable()
			nd, err = startNode(kcmCtx, dir, filepath.Dir(exe), port, nodeKC, schedKC, info.AdminKubeconfig, o.nodeImages)
		}
		if err != nil {
			return fail("node", err)
		}
		info.Node = &nd.info
	}
	line, err := json.Marshal(info)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "controlplane.json"), append(line, '\n'), 0o644)
	}
	if err != nil {
		return fail("controlplane.json", err)
	}
	if _, err := fmt.Fprintf(jsonOut, "%s\n", line); err != nil {
		// the reader is gone
		stopClients()
		stopSelf()
		waitAPIServer(apiDone)
		return 1
	}

	select {
	case s := <-sigs:
		if !selfStop.Load() {
			logf("got %v, stopping", s)
		}
		stopClients()
		waitAPIServer(apiDone)
		return 0
	case err := <-apiDone:
		logf("apiserver exited: %v", err)
		logTail(filepath.Join(dir, "apiserver.log"), 15)
		return 1
	}
}

// waitAPIServer waits for the in-process apiserver to return after its
// signal context was cancelled, but not forever.
func waitAPIServer(apiDone <-chan error) {
	select {
	case <-apiDone:
	case <-time.After(30 * time.Second):
		logf("apiserver did not stop within 30s; exiting anyway")
	}
}

func startEtcd(dir string, clientPort, peerPort int, keepData bool, timeout time.Duration) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "controlplane"
	cfg.Dir = filepath.Join(dir, "etcd")
	if !keepData {
		_ = os.RemoveAll(cfg.Dir)
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.UnsafeNoFsync = true // test data only; much faster on slow disks
	// a loaded 2-core test machine is slow; don't flood etcd.log
	cfg.WarningApplyDuration = time.Second
	cfg.WarningUnaryRequestDuration = time.Second
	cfg.AuthToken = "simple"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, clientURL.String(), nil
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(timeout):
		e.Server.Stop()
		e.Close()
		return nil, "", errors.New("timed out waiting for etcd")
	}
}

func waitReady(ctx context.Context, server, caFile, token string) error {
	var lastErr error = errors.New("no answer yet")
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last error: %v", ctx.Err(), lastErr)
		case <-tick.C:
		}
		ca, err := os.ReadFile(caFile)
		if err != nil {
			lastErr = err
			continue
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			lastErr = fmt.Errorf("no certificate in %s yet", caFile)
			continue
		}
		client := &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			lastErr = err
			client.CloseIdleConnections()
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		client.CloseIdleConnections()
		if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		lastErr = fmt.Errorf("/readyz: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
}

func writeKubeconfig(path, server string, ca []byte, user string, auth clientcmdapi.AuthInfo, namespace string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["controlplane"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &auth
	cfg.Contexts["controlplane"] = &clientcmdapi.Context{Cluster: "controlplane", AuthInfo: user, Namespace: namespace}
	cfg.CurrentContext = "controlplane"
	return clientcmd.WriteToFile(*cfg, path)
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// freePorts reserves n distinct free loopback ports (they are released before
// use, so another process could take one in between; callers retry).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
