package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The node (--node): one worker, as a cluster has. The kubelet and
// kube-scheduler are built from this module's k8s.io/kubernetes (build.sh),
// containers run under Debian's containerd and runc, pods get their network
// namespaces from CNI's bridge plugin. Every address stays on this machine:
// pods live on a bridge of their own with no default route, forwarding out
// of the bridge is dropped, and the only way out of a pod is to the host's
// bridge address (where tests put their doubles) and to the `kubernetes`
// Service, which is DNATed to the apiserver on loopback, as kube-proxy
// would.
const (
	nodeName      = "dbgrant-node"
	nodeBridge    = "dbgrant0"
	nodeHostIP    = "10.244.0.1"
	nodePodCIDR   = "10.244.0.0/24"
	nodeServiceIP = "10.0.0.1" // the first address of --service-cluster-ip-range
	natChain      = "DBGRANT-NODE"
	forwardChain  = "DBGRANT-NODE-FWD"
	// The sandbox image: our own pause, under a name that does not
	// pretend to come from registry.k8s.io (there is no registry here).
	pauseImage = "localhost/dbgrant/pause:node"
)

// NodeInfo is what the control plane says about its node.
type NodeInfo struct {
	Name    string `json:"name"`
	HostIP  string `json:"hostIP"`
	PodCIDR string `json:"podCIDR"`
	Dir     string `json:"dir"`
	// ReadySeconds from starting containerd to the Node's Ready=True.
	ReadySeconds float64 `json:"readySeconds"`
}

// nodeImage is a static binary to package as an image (--node-image).
type nodeImage struct{ ref, binary string }

func parseNodeImage(v string) (nodeImage, error) {
	ref, bin, ok := strings.Cut(v, "=")
	if !ok || ref == "" || bin == "" {
		return nodeImage{}, fmt.Errorf("--node-image %q: want REF=STATIC_BINARY", v)
	}
	return nodeImage{ref: ref, binary: bin}, nil
}

// node is a running node; stop undoes everything start did.
type node struct {
	dir       string
	socket    string
	procs     []*exec.Cmd
	netnsPrev map[string]bool
	info      NodeInfo
}

// nodePrerequisites says precisely what this machine lacks for a node.
func nodePrerequisites() error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the kubelet and containerd manage cgroups, mounts and network namespaces)")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			missing = append(missing, filepath.Join(cniBinDir, plugin))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("a node needs %s (Debian: apt-get install containerd runc containernetworking-plugins iptables iproute2)", strings.Join(missing, ", "))
	}
	return nil
}

const cniBinDir = "/usr/lib/cni"

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startNode brings a node up and waits until it is Ready.
func startNode(ctx context.Context, dir, tools string, apiPort int, nodeKubeconfig, schedulerKubeconfig, adminKubeconfig string, images []nodeImage) (*node, error) {
	if err := nodePrerequisites(); err != nil {
		return nil, err
	}
	start := time.Now()
	n := &node{dir: filepath.Join(dir, "node"), netnsPrev: map[string]bool{}}
	n.socket = filepath.Join(n.dir, "containerd", "containerd.sock")
	n.info = NodeInfo{Name: nodeName, HostIP: nodeHostIP, PodCIDR: nodePodCIDR, Dir: n.dir}
	for _, d := range []string{"containerd", "cni/net.d", "kubelet", "images"} {
		if err := os.MkdirAll(filepath.Join(n.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			n.netnsPrev[e.Name()] = true
		}
	}
	fail := func(err error) (*node, error) {
		n.stop()
		return nil, err
	}
	if err := n.network(apiPort); err != nil {
		return fail(fmt.Errorf("node network: %w", err))
	}
	if err := n.containerd(); err != nil {
		return fail(fmt.Errorf("containerd: %w", err))
	}
	all := append([]nodeImage{{ref: pauseImage, binary: filepath.Join(tools, "pause")}}, images...)
	for _, img := range all {
		if err := n.importImage(img); err != nil {
			return fail(fmt.Errorf("image %s: %w", img.ref, err))
		}
	}
	if err := n.kubelet(filepath.Join(tools, "kubelet"), nodeKubeconfig); err != nil {
		return fail(fmt.Errorf("kubelet: %w", err))
	}
	sched := exec.Command(filepath.Join(tools, "kube-scheduler"), "--kubeconfig="+schedulerKubeconfig, "--leader-elect=false", "--secure-port=0")
	if err := n.spawn(sched, "kube-scheduler.log"); err != nil {
		return fail(fmt.Errorf("kube-scheduler: %w", err))
	}
	if err := waitNodeReady(ctx, adminKubeconfig); err != nil {
		logTail(filepath.Join(n.dir, "kubelet.log"), 15)
		return fail(err)
	}
	n.info.ReadySeconds = float64(time.Since(start).Milliseconds()) / 1000
	return n, nil
}

func (n *node) spawn(cmd *exec.Cmd, logName string) error {
	log, err := os.OpenFile(filepath.Join(n.dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	// its own process group: a terminal's Ctrl-C goes to the control plane,
	// which stops the node in order
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	n.procs = append(n.procs, cmd)
	return nil
}

// network: the pods' bridge, the Service DNAT to the apiserver, and no
// forwarding out of the bridge.
func (n *node) network(apiPort int) error {
	_ = sh("ip", "link", "add", nodeBridge, "type", "bridge") // exists after an unclean stop
	steps := [][]string{
		{"ip", "addr", "replace", nodeHostIP + "/24", "dev", nodeBridge},
		{"ip", "link", "set", nodeBridge, "up"},
	}
	for _, s := range steps {
		if err := sh(s[0], s[1:]...); err != nil {
			return err
		}
	}
	// DNAT to 127.0.0.1 from another interface needs route_localnet, as
	// kube-proxy sets it for node ports on localhost.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+nodeBridge+"/route_localnet", []byte("1"), 0o644); err != nil {
		return err
	}
	for _, c := range [][]string{{"nat", natChain}, {"filter", forwardChain}} {
		_ = sh("iptables", "-t", c[0], "-N", c[1])
		if err := sh("iptables", "-t", c[0], "-F", c[1]); err != nil {
			return err
		}
	}
	rules := [][]string{
		{"-t", "nat", "-A", natChain, "-d", nodeServiceIP + "/32", "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", "127.0.0.1:" + strconv.Itoa(apiPort)},
		{"-t", "filter", "-A", forwardChain, "-j", "DROP"},
	}
	for _, r := range rules {
		if err := sh("iptables", r...); err != nil {
			return err
		}
	}
	jumps := [][]string{
		{"-t", "nat", "PREROUTING", "-i", nodeBridge, "-j", natChain},
		{"-t", "filter", "FORWARD", "-i", nodeBridge, "-j", forwardChain},
	}
	for _, j := range jumps {
		check := append([]string{j[0], j[1], "-C"}, j[2:]...)
		if sh("iptables", check...) != nil {
			if err := sh("iptables", append([]string{j[0], j[1], "-I"}, j[2:]...)...); err != nil {
				return err
			}
		}
	}
	// The pods' network: the bridge, an address from the node's range, a
	// route to the Service range through the host and no default route.
	conflist := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "dbgrant-node",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": nodeBridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
				"ipam": map[string]any{
					"type": "host-local",
					// Allocations live with the run, not in the host's
					// /var/lib/cni: containers killed on stop never get a
					// CNI DEL, and leaked addresses would fill the range.
					"dataDir": filepath.Join(n.dir, "cni/ipam"),
					"ranges":  [][]map[string]string{{{"subnet": nodePodCIDR, "gateway": nodeHostIP}}},
					"routes":  []map[string]string{{"dst": "10.0.0.0/24"}},
				},
			},
			map[string]any{"type": "loopback"},
		},
	}
	b, _ := json.MarshalIndent(conflist, "", "  ")
	return os.WriteFile(filepath.Join(n.dir, "cni/net.d/10-dbgrant.conflist"), b, 0o644)
}

func (n *node) containerd() error {
	root := filepath.Join(n.dir, "containerd")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  # This machine withholds CAP_SYS_RESOURCE: never ask for an OOM score
  # below containerd's own (runc fails on -998 otherwise).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[5]q
    conf_dir = %[6]q
`, filepath.Join(root, "root"), filepath.Join(root, "state"), n.socket, pauseImage, cniBinDir, filepath.Join(n.dir, "cni/net.d"))
	path := filepath.Join(root, "config.toml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return err
	}
	if err := n.spawn(exec.Command("containerd", "--config", path), "containerd.log"); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := sh("ctr", "-a", n.socket, "version")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			logTail(filepath.Join(n.dir, "containerd.log"), 10)
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// importImage packages a static binary as a one-layer OCI image (the
// binary at /, run as the distroless nonroot user) and imports it into
// containerd's Kubernetes namespace.
func (n *node) importImage(img nodeImage) error {
	archive := filepath.Join(n.dir, "images", strings.NewReplacer("/", "_", ":", "_").Replace(img.ref)+".tar")
	if err := writeOCIArchive(archive, img.ref, img.binary); err != nil {
		return err
	}
	return sh("ctr", "-a", n.socket, "-n", "k8s.io", "images", "import", archive)
}

// writeOCIArchive writes an OCI image layout archive holding one image:
// `binary` as /<its name>, its entrypoint, user 65532 (distroless nonroot)
// and an empty /tmp.
func writeOCIArchive(path, ref, binary string) error {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	name := filepath.Base(binary)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))}); err != nil {
		return err
	}
	if _, err := tw.Write(bin); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	diffID := digest(layer.Bytes())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(layer.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"User": "65532:65532", "Entrypoint": []string{"/" + name}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(gz.Bytes()), "size": gz.Len()}},
	})
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
			"annotations": map[string]string{"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref},
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	out := tar.NewWriter(f)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(digest(gz.Bytes()), "sha256:"), gz.Bytes()},
		{"blobs/sha256/" + strings.TrimPrefix(digest(config), "sha256:"), config},
		{"blobs/sha256/" + strings.TrimPrefix(digest(manifest), "sha256:"), manifest},
	}
	for _, file := range files {
		if err := out.WriteHeader(&tar.Header{Name: file.name, Mode: 0o644, Size: int64(len(file.data))}); err != nil {
			return err
		}
		if _, err := out.Write(file.data); err != nil {
			return err
		}
	}
	return out.Close()
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (n *node) kubelet(bin, kubeconfig string) error {
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 controllers (with a cgroup2 mount beside
# them); the kubelet refuses cgroup v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://%[1]s
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: /etc/resolv.conf
# Container logs stay in the run's directory (tests read them there),
# not in the host's /var/log/pods.
podLogsDir: %[2]s
# A test node on a shared disk: evict for nothing but memory.
localStorageCapacityIsolation: false
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%%", "imagefs.available": "1%%", "nodefs.inodesFree": "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, n.socket, filepath.Join(n.dir, "pod-logs"))
	path := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(bin, "--config="+path, "--kubeconfig="+kubeconfig, "--hostname-override="+nodeName,
		"--node-ip="+nodeHostIP, "--root-dir="+filepath.Join(n.dir, "kubelet"))
	return n.spawn(cmd, "kubelet.log")
}

func waitNodeReady(ctx context.Context, kubeconfig string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	last := "not registered"
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if nd, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{}); err == nil {
			for _, c := range nd.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = c.Reason + ": " + c.Message
				}
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("node %s not Ready after 90s: %s", nodeName, last)
}

// stop ends the node and removes what it set up: the kubelet and scheduler,
// every container (killed), containerd and its shims, the mounts and
// network namespaces they left, the iptables chains and the bridge.
func (n *node) stop() {
	// kubelet and scheduler first, so nothing restarts the containers
	for i := len(n.procs) - 1; i >= 0; i-- {
		p := n.procs[i]
		if filepath.Base(p.Path) == "containerd" {
			continue
		}
		stopProc(p)
	}
	if out, err := exec.Command("ctr", "-a", n.socket, "-n", "k8s.io", "tasks", "ls", "-q").Output(); err == nil {
		for _, id := range strings.Fields(string(out)) {
			_ = sh("ctr", "-a", n.socket, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
		}
	}
	for _, p := range n.procs {
		if filepath.Base(p.Path) == "containerd" {
			stopProc(p)
		}
	}
	killShims(n.socket)
	unmountUnder(n.dir)
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if !n.netnsPrev[e.Name()] && strings.HasPrefix(e.Name(), "cni-") {
				path := filepath.Join("/run/netns", e.Name())
				_ = syscall.Unmount(path, syscall.MNT_DETACH)
				_ = os.Remove(path)
			}
		}
	}
	_ = sh("iptables", "-t", "nat", "-D", "PREROUTING", "-i", nodeBridge, "-j", natChain)
	_ = sh("iptables", "-t", "filter", "-D", "FORWARD", "-i", nodeBridge, "-j", forwardChain)
	for _, c := range [][]string{{"nat", natChain}, {"filter", forwardChain}} {
		_ = sh("iptables", "-t", c[0], "-F", c[1])
		_ = sh("iptables", "-t", c[0], "-X", c[1])
	}
	_ = sh("ip", "link", "del", nodeBridge)
}

func stopProc(p *exec.Cmd) {
	if p.Process == nil {
		return
	}
	_ = p.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.Process.Kill()
		<-done
	}
}

// killShims kills the containerd shims serving socket (they outlive
// containerd by design).
func killShims(socket string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range procs {
		b, err := os.ReadFile(c)
		if err != nil {
			continue
		}
		cmdline := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		if strings.Contains(cmdline, "containerd-shim") && strings.Contains(cmdline, socket) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(c))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	time.Sleep(200 * time.Millisecond)
}

// unmountUnder detaches every mount under dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			points = append(points, fields[4])
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			logf("unmounting %s: %v", p, err)
		}
	}
}
