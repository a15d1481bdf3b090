package kubernetes

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// repoRoot is the kpush repository, two levels above this module.
const repoRoot = "../.."

// overlays lists every overlay the tests render. A new overlay directory that
// is not listed here fails TestEveryOverlayIsTested.
var overlays = []string{"dev", "prod"}

// bundle is one rendered overlay, decoded into typed objects.
type bundle struct {
	overlay        string
	namespaces     []*corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap
	deployment     *appsv1.Deployment
	services       map[string]*corev1.Service
	ingress        *networkingv1.Ingress
	hpa            *autoscalingv2.HorizontalPodAutoscaler
	pdb            *policyv1.PodDisruptionBudget
	netpol         *networkingv1.NetworkPolicy
	serviceMonitor *serviceMonitor
	promRule       *prometheusRule
	// namespaced lists every namespaced object as kind/name -> namespace.
	namespaced map[string]string
}

// serviceMonitor mirrors the monitoring.coreos.com/v1 fields kpush uses, with
// the Prometheus Operator's JSON names; strict decoding rejects anything else,
// so a misspelled field cannot pass silently.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel,omitempty"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector *struct {
			Any        bool     `json:"any,omitempty"`
			MatchNames []string `json:"matchNames,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// prometheusRule mirrors the monitoring.coreos.com/v1 PrometheusRule fields.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name     string `json:"name"`
			Interval string `json:"interval,omitempty"`
			Rules    []struct {
				Alert       string            `json:"alert,omitempty"`
				Record      string            `json:"record,omitempty"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// decodeStrict decodes JSON the way the API server's strict field validation
// does: field names are case-sensitive, unknown and duplicate fields fail.
func decodeStrict(data []byte, into any) error {
	strictErrs, err := k8sjson.UnmarshalStrict(data, into)
	if err != nil {
		return err
	}
	if len(strictErrs) > 0 {
		return fmt.Errorf("%v", strictErrs)
	}
	return nil
}

// render runs kustomize on an overlay with the default (root-only) load
// restrictions, exactly what `kubectl apply -k` does.
func render(t *testing.T, overlay string) *bundle {
	t.Helper()
	return renderFS(t, filesys.MakeFsOnDisk(), filepath.Join("overlays", overlay), overlay)
}

// renderFS is render on the kustomization in dir of fsys; overlay names it
// in messages.
func renderFS(t *testing.T, fsys filesys.FileSystem, dir, overlay string) *bundle {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(fsys, dir)
	if err != nil {
		t.Fatalf("kustomize build overlays/%s: %v", overlay, err)
	}
	b := &bundle{overlay: overlay, services: map[string]*corev1.Service{}, namespaced: map[string]string{}}
	for _, res := range m.Resources() {
		data, err := res.MarshalJSON()
		if err != nil {
			t.Fatalf("overlays/%s: marshal %s/%s: %v", overlay, res.GetKind(), res.GetName(), err)
		}
		gvk := res.GetApiVersion() + " " + res.GetKind()
		id := res.GetKind() + "/" + res.GetName()
		var obj any
		switch gvk {
		case "v1 Namespace":
			o := &corev1.Namespace{}
			b.namespaces = append(b.namespaces, o)
			obj = o
		case "v1 ServiceAccount":
			b.serviceAccount = once(t, b.serviceAccount, id)
			obj = b.serviceAccount
		case "v1 ConfigMap":
			b.configMap = once(t, b.configMap, id)
			obj = b.configMap
		case "apps/v1 Deployment":
			b.deployment = once(t, b.deployment, id)
			obj = b.deployment
		case "v1 Service":
			o := &corev1.Service{}
			b.services[res.GetName()] = o
			obj = o
		case "networking.k8s.io/v1 Ingress":
			b.ingress = once(t, b.ingress, id)
			obj = b.ingress
		case "autoscaling/v2 HorizontalPodAutoscaler":
			b.hpa = once(t, b.hpa, id)
			obj = b.hpa
		case "policy/v1 PodDisruptionBudget":
			b.pdb = once(t, b.pdb, id)
			obj = b.pdb
		case "networking.k8s.io/v1 NetworkPolicy":
			b.netpol = once(t, b.netpol, id)
			obj = b.netpol
		case "monitoring.coreos.com/v1 ServiceMonitor":
			b.serviceMonitor = once(t, b.serviceMonitor, id)
			obj = b.serviceMonitor
		case "monitoring.coreos.com/v1 PrometheusRule":
			b.promRule = once(t, b.promRule, id)
			obj = b.promRule
		default:
			t.Errorf("overlays/%s: %s (%s) has no strict decoder in this test; add one", overlay, id, gvk)
			continue
		}
		if err := decodeStrict(data, obj); err != nil {
			t.Errorf("overlays/%s: %s does not decode strictly as %s: %v", overlay, id, gvk, err)
		}
		if res.GetKind() != "Namespace" {
			b.namespaced[id] = res.GetNamespace()
		}
	}
	for name, p := range map[string]any{
		"ServiceAccount": b.serviceAccount, "ConfigMap": b.configMap, "Deployment": b.deployment,
		"Ingress": b.ingress, "HorizontalPodAutoscaler": b.hpa, "PodDisruptionBudget": b.pdb,
		"NetworkPolicy": b.netpol, "ServiceMonitor": b.serviceMonitor, "PrometheusRule": b.promRule,
	} {
		if isNil(p) {
			t.Fatalf("overlays/%s: renders no %s", overlay, name)
		}
	}
	return b
}

// once returns a fresh object for a kind that must appear exactly once.
func once[T any](t *testing.T, prev *T, id string) *T {
	t.Helper()
	if prev != nil {
		t.Errorf("%s: kind rendered more than once", id)
	}
	return new(T)
}

func isNil(p any) bool { return reflect.ValueOf(p).IsNil() }

// kpushConfig is the part of kpush's config the manifests depend on. It is
// read leniently: whether the file is valid is kpush's own loader's call (see
// TestConfigMapPassesKpushValidate).
type kpushConfig struct {
	Listen      string `json:"listen"`
	AdminListen string `json:"admin_listen"`
	Gateway     struct {
		Path           string `json:"path"`
		SSEPath        string `json:"sse_path"`
		CentrifugoPath string `json:"centrifugo_path"`
		MaxConnections int64  `json:"max_connections"`
		DrainTimeout   string `json:"drain_timeout"`
	} `json:"gateway"`
}

// Defaults from the config contract (configs/kpush.yaml), used when a key is
// left out.
const (
	defaultListen       = ":8080"
	defaultAdminListen  = ":9090"
	defaultPath         = "/ws"
	defaultSSEPath      = "/events"
	defaultCFPath       = "/connection/websocket"
	pathOff             = "off" // sse_path or centrifugo_path: not served
	defaultDrainTimeout = 20 * time.Second
	defaultMaxConns     = 100000
)

func (c kpushConfig) drainTimeout(t *testing.T) time.Duration {
	t.Helper()
	if c.Gateway.DrainTimeout == "" {
		return defaultDrainTimeout
	}
	d, err := time.ParseDuration(c.Gateway.DrainTimeout)
	if err != nil {
		t.Fatalf("gateway.drain_timeout %q: %v", c.Gateway.DrainTimeout, err)
	}
	return d
}

// configFile returns the single kpush config file in the rendered ConfigMap.
func (b *bundle) configFile(t *testing.T) (key string, cfg kpushConfig, raw string) {
	t.Helper()
	if len(b.configMap.Data) != 1 {
		t.Fatalf("overlays/%s: ConfigMap %s has keys %v, want exactly one config file", b.overlay, b.configMap.Name, keys(b.configMap.Data))
	}
	for k, v := range b.configMap.Data {
		key, raw = k, v
	}
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("overlays/%s: ConfigMap %s key %s is not YAML: %v", b.overlay, b.configMap.Name, key, err)
	}
	if cfg.Listen == "" {
		cfg.Listen = defaultListen
	}
	if cfg.AdminListen == "" {
		cfg.AdminListen = defaultAdminListen
	}
	if cfg.Gateway.Path == "" {
		cfg.Gateway.Path = defaultPath
	}
	if cfg.Gateway.SSEPath == "" {
		cfg.Gateway.SSEPath = defaultSSEPath
	}
	if cfg.Gateway.CentrifugoPath == "" {
		cfg.Gateway.CentrifugoPath = defaultCFPath
	}
	if cfg.Gateway.MaxConnections == 0 {
		cfg.Gateway.MaxConnections = defaultMaxConns
	}
	return key, cfg, raw
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestEveryOverlayIsTested(t *testing.T) {
	entries, err := os.ReadDir("overlays")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if fmt.Sprint(dirs) != fmt.Sprint(overlays) {
		t.Fatalf("overlays on disk %v, tested %v: update the overlays list", dirs, overlays)
	}
}

// The strict decoder is what makes "renders" mean "the API server accepts
// it": a misspelled or wrongly-cased field must fail, not vanish.
func TestStrictDecodingRejectsTypos(t *testing.T) {
	for _, tc := range []struct{ name, json string }{
		{"unknown field", `{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replica":1}}`},
		{"wrong case", `{"apiVersion":"apps/v1","kind":"Deployment","spec":{"Replicas":1}}`},
		{"duplicate field", `{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":1,"replicas":2}}`},
		{"wrong type", `{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":"two"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := decodeStrict([]byte(tc.json), &appsv1.Deployment{}); err == nil {
				t.Errorf("accepted %s", tc.json)
			}
		})
	}
	var sm serviceMonitor
	if err := decodeStrict([]byte(`{"spec":{"endpoints":[{"port":"admin","intervall":"15s"}]}}`), &sm); err == nil {
		t.Error("ServiceMonitor decoder accepted a misspelled endpoint field")
	}
}
