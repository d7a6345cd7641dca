// Package cpuprofile takes CPU profiles of the control plane, for the
// benchmark: where the apiserver's (and etcd's, in the same process) CPU
// goes while dbgrant works.
//
//   - With --exit-on-stdin-eof, standard input also takes commands, one per
//     line: "cpu-profile start PATH" starts Go's CPU profiler, and
//     "cpu-profile stop" stops it and moves the finished profile to PATH
//     (written as PATH.part first, so PATH appearing means it is complete).
//   - "controlplane profile-summary FILE" prints, as one JSON object, how a
//     profile's CPU time divides by the request being served and by the
//     kind of work, from the functions on each sample's stack.
package cpuprofile

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime/pprof"
	"sort"
	"strings"

	"github.com/google/pprof/profile"
)

// ReadCommands reads stdin until EOF, running the profiling commands; any
// other line is ignored.
func ReadCommands(in io.Reader, logf func(string, ...any)) {
	sc := bufio.NewScanner(in)
	var (
		file *os.File
		dest string
	)
	stop := func() {
		if file == nil {
			return
		}
		pprof.StopCPUProfile()
		err := file.Close()
		if err == nil {
			err = os.Rename(file.Name(), dest)
		}
		if err != nil {
			logf("cpu-profile: %v", err)
		}
		file = nil
	}
	defer stop()
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 3 && fields[0] == "cpu-profile" && fields[1] == "start":
			stop()
			f, err := os.Create(fields[2] + ".part")
			if err != nil {
				logf("cpu-profile: %v", err)
				continue
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				logf("cpu-profile: %v", err)
				_ = f.Close()
				continue
			}
			file, dest = f, fields[2]
		case len(fields) == 2 && fields[0] == "cpu-profile" && fields[1] == "stop":
			stop()
		}
	}
}

// A category of CPU time: the first whose pattern matches a frame of the
// sample's stack (in the order given) takes the sample.
type category struct {
	name    string
	pattern *regexp.Regexp
}

func cat(name, pattern string) category { return category{name, regexp.MustCompile(pattern)} }

// What request (or background loop) a sample was serving, matched from the
// root of its stack. Function names are kube-apiserver 1.35's and etcd 3.6's.
var byRequest = []category{
	cat("garbage collector (background)", `^runtime\.gcBgMarkWorker$`),
	cat("status writes (…/status)", `customresource\.\(\*StatusREST\)\.Update$`),
	cat("creates (POST)", `endpoints/handlers\.CreateResource|handlers\.createHandler`),
	cat("patches and applies (PATCH)", `endpoints/handlers\.PatchResource|\(\*patcher\)\.patchResource`),
	cat("updates (PUT)", `endpoints/handlers\.UpdateResource`),
	cat("deletes", `endpoints/handlers\.DeleteResource|endpoints/handlers\.DeleteCollection`),
	cat("lists and gets", `endpoints/handlers\.ListResource|endpoints/handlers\.GetResource|handlers\.getResourceHandler`),
	cat("watches: sending events to watchers", `\(\*WatchServer\)|\(\*cacheWatcher\)|\(\*watchCacheInterval\)`),
	cat("watch cache: reading etcd's changes", `storage/etcd3\.\(\*watchChan\)|storage/cacher\.|\(\*watchCache\)`),
	cat("etcd server", `^go\.etcd\.io/etcd/server/`),
	cat("request plumbing (TLS, HTTP, authn/z, filters)", `^net/http\.|^crypto/tls\.|k8s\.io/apiserver/pkg/endpoints/filters|k8s\.io/apiserver/pkg/server/filters`),
	cat("gRPC (apiserver ↔ etcd)", `^google\.golang\.org/grpc`),
}

// What kind of work a sample was doing, matched from the leaf of its stack
// upwards, so allocation inside a JSON decoder counts as JSON (byRuntime
// takes what none of these claims).
var byWork = []category{
	cat("JSON encoding and decoding", `^encoding/json\.|^sigs\.k8s\.io/json|json-iterator|k8s\.io/apimachinery/pkg/util/json|unstructuredJSONScheme|^k8s\.io/apimachinery/pkg/runtime/serializer/json`),
	cat("YAML decoding (apply patches)", `yaml`),
	cat("managed fields (structured-merge-diff)", `structured-merge-diff|managedfields`),
	cat("CEL validation", `apiserver/schema/cel|google/cel-go|k8s\.io/apiserver/pkg/cel`),
	cat("OpenAPI schema: validation, defaulting, pruning", `kube-openapi/pkg/validation|apiserver/schema/defaulting|apiserver/schema/pruning|apiserver/schema/objectmeta|apiextensions-apiserver/pkg/apiserver/validation`),
	cat("protobuf (etcd values, gRPC)", `protobuf|gogo`),
	cat("TLS", `^crypto/`),
	cat("etcd storage (bbolt, raft, WAL)", `bbolt|etcd/raft|etcd/server/v3/storage|etcd/server/v3/etcdserver/api/snap|/wal`),
}

// The runtime's own work, when no frame above it says what it was for:
// garbage collection wherever a collector frame is on the stack.
var byRuntime = []category{
	cat("garbage collection and allocation", `^runtime\.(gc|mallocgc|scan|mark|sweep|bgsweep|greyobject|wbBuf|bulkBarrier|memclr|newobject|makeslice|growslice|mapassign|makemap)|^runtime\.\(\*mspan\)|^runtime\.\(\*mheap\)|^runtime\.\(\*mcache\)|^runtime\.\(\*gcWork\)`),
	cat("syscalls (network, disk)", `^syscall\.|^internal/runtime/syscall|^internal/poll`),
	cat("scheduler and other runtime", `^runtime\.`),
}

// Share is one category's part of a profile.
type Share struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
	Share   float64 `json:"share"`
}

// Summary is how a profile's CPU time divides.
type Summary struct {
	File            string  `json:"file"`
	DurationSeconds float64 `json:"durationSeconds"`
	CPUSeconds      float64 `json:"cpuSeconds"`
	ByRequest       []Share `json:"byRequest"`
	ByWork          []Share `json:"byWork"`
}

func Summarize(path string) (*Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	idx := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" && st.Unit == "nanoseconds" {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("%s: not a CPU profile (no cpu/nanoseconds sample type)", path)
	}
	req, work := map[string]float64{}, map[string]float64{}
	total := 0.0
	for _, s := range p.Sample {
		secs := float64(s.Value[idx]) / 1e9
		total += secs
		// Frames leaf first; inlined functions come first within a location.
		var frames []string
		for _, loc := range s.Location {
			for _, line := range loc.Line {
				if line.Function != nil {
					frames = append(frames, line.Function.Name)
				}
			}
		}
		req[classify(byRequest, frames, true)] += secs
		w := classify(byWork, frames, false)
		if w == "other" {
			w = classify(byRuntime, frames, true)
		}
		work[w] += secs
	}
	return &Summary{
		File:            path,
		DurationSeconds: float64(p.DurationNanos) / 1e9,
		CPUSeconds:      total,
		ByRequest:       shares(req, total),
		ByWork:          shares(work, total),
	}, nil
}

// classify returns the first category (in list order) matching any frame;
// fromRoot walks the stack from its root, otherwise from its leaf, and the
// first matching frame on that walk wins within the category order.
func classify(cats []category, frames []string, fromRoot bool) string {
	if fromRoot {
		for _, c := range cats {
			for i := len(frames) - 1; i >= 0; i-- {
				if c.pattern.MatchString(frames[i]) {
					return c.name
				}
			}
		}
		return "other"
	}
	for _, fr := range frames {
		for _, c := range cats {
			if c.pattern.MatchString(fr) {
				return c.name
			}
		}
	}
	return "other"
}

func shares(m map[string]float64, total float64) []Share {
	out := make([]Share, 0, len(m))
	for k, v := range m {
		s := 0.0
		if total > 0 {
			s = v / total
		}
		out = append(out, Share{Name: k, Seconds: round3(v), Share: round3(s)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seconds > out[j].Seconds })
	return out
}

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

// Command is "controlplane profile-summary FILE": the summary as one JSON
// object on stdout.
func Command(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: controlplane profile-summary FILE")
		return 2
	}
	s, err := Summarize(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: profile-summary: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(s); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: profile-summary: %v\n", err)
		return 1
	}
	return 0
}
