package kubernetes

import (
	"net"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// distrolessNonroot is the uid/gid of the distroless "nonroot" user that the
// Dockerfile's runtime image runs as.
const distrolessNonroot = 65532

func TestOverlays(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			render(t, overlay).checkAll(t)
		})
	}
}

// checkAll runs every check on a rendered overlay.
func (b *bundle) checkAll(t *testing.T) {
	t.Run("namespace", b.checkNamespace)
	t.Run("ports and probes", b.checkPortsAndProbes)
	t.Run("drain fits in grace period", b.checkGracePeriod)
	t.Run("rollout", b.checkRollout)
	t.Run("resources and runtime", b.checkResources)
	t.Run("security", b.checkSecurity)
	t.Run("topology spread", b.checkSpread)
	t.Run("config mount", b.checkConfigMount)
	t.Run("selectors", b.checkSelectors)
	t.Run("services", b.checkServices)
	t.Run("ingress", b.checkIngress)
	t.Run("autoscaler", b.checkHPA)
	t.Run("network policy", b.checkNetworkPolicy)
	t.Run("service monitor", b.checkServiceMonitor)
	t.Run("alert rules", b.checkAlertRules)
}

func (b *bundle) container(t *testing.T) *corev1.Container {
	t.Helper()
	cs := b.deployment.Spec.Template.Spec.Containers
	if len(cs) != 1 || cs[0].Name != "kpush" {
		t.Fatalf("Deployment %s: want one container named kpush, got %d", b.deployment.Name, len(cs))
	}
	return &cs[0]
}

// containerPort resolves a named or numbered port against the kpush container.
func (b *bundle) containerPort(t *testing.T, p intstr.IntOrString) (corev1.ContainerPort, bool) {
	t.Helper()
	for _, cp := range b.container(t).Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

func listenPort(t *testing.T, key, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", key, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s %q: port is not a number", key, addr)
	}
	return int32(n)
}

func (b *bundle) checkNamespace(t *testing.T) {
	if len(b.namespaces) != 1 {
		t.Fatalf("want one Namespace object, got %d", len(b.namespaces))
	}
	ns := b.namespaces[0]
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("Namespace %s does not enforce the restricted Pod Security Standard", ns.Name)
	}
	for id, got := range b.namespaced {
		if got != ns.Name {
			t.Errorf("%s is in namespace %q, want %q", id, got, ns.Name)
		}
	}
}

// The admin port and paths the probes use must be the ones kpush serves
// (admin_listen, /healthz, /readyz), and the public port must be listen.
func (b *bundle) checkPortsAndProbes(t *testing.T) {
	_, cfg, _ := b.configFile(t)
	c := b.container(t)
	want := map[string]int32{
		"http":  listenPort(t, "listen", cfg.Listen),
		"admin": listenPort(t, "admin_listen", cfg.AdminListen),
	}
	got := map[string]int32{}
	for _, p := range c.Ports {
		got[p.Name] = p.ContainerPort
		if p.Protocol != corev1.ProtocolTCP {
			t.Errorf("container port %s: protocol %s, want TCP", p.Name, p.Protocol)
		}
	}
	for name, port := range want {
		if got[name] != port {
			t.Errorf("container port %q = %d, config says %d", name, got[name], port)
		}
	}
	if len(got) != len(want) {
		t.Errorf("container ports %v, want exactly %v", got, want)
	}
	probes := []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startupProbe", c.StartupProbe, "/healthz"},
		{"livenessProbe", c.LivenessProbe, "/healthz"},
		{"readinessProbe", c.ReadinessProbe, "/readyz"},
	}
	for _, p := range probes {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: missing or not an HTTP probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s: path %q, want %q", p.name, p.probe.HTTPGet.Path, p.path)
		}
		cp, ok := b.containerPort(t, p.probe.HTTPGet.Port)
		if !ok {
			t.Errorf("%s: port %s is not a container port", p.name, p.probe.HTTPGet.Port.String())
		} else if cp.ContainerPort != want["admin"] {
			t.Errorf("%s: port %s is %d, want the admin port %d", p.name, p.probe.HTTPGet.Port.String(), cp.ContainerPort, want["admin"])
		}
	}
	// Liveness must not kill a pod before startup could have finished, and
	// readiness must react within a few seconds of a drain starting.
	if sp := c.StartupProbe; sp != nil && sp.PeriodSeconds*sp.FailureThreshold < 30 {
		t.Errorf("startupProbe allows only %ds to start", sp.PeriodSeconds*sp.FailureThreshold)
	}
	if rp := c.ReadinessProbe; rp != nil && rp.PeriodSeconds*rp.FailureThreshold > 15 {
		t.Errorf("readinessProbe takes up to %ds to notice /readyz turning 503", rp.PeriodSeconds*rp.FailureThreshold)
	}
}

// terminationGracePeriodSeconds must cover the preStop pause plus the drain
// window read from the deployed config, or kubelet SIGKILLs the pod while
// clients are still being closed with 1001.
func (b *bundle) checkGracePeriod(t *testing.T) {
	_, cfg, _ := b.configFile(t)
	c := b.container(t)
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatal("preStop must be a sleep action (the distroless image has no shell for exec)")
	}
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if preStop < 5*time.Second {
		t.Errorf("preStop pause %v is too short for endpoint removal to reach the ingress", preStop)
	}
	gp := b.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds
	if gp == nil {
		t.Fatal("terminationGracePeriodSeconds is not set (default 30s)")
	}
	grace := time.Duration(*gp) * time.Second
	drain := cfg.drainTimeout(t)
	if grace <= preStop+drain {
		t.Errorf("terminationGracePeriodSeconds %v <= preStop %v + gateway.drain_timeout %v", grace, preStop, drain)
	}
}

func (b *bundle) checkRollout(t *testing.T) {
	d := b.deployment
	if d.Spec.Replicas != nil {
		t.Errorf("Deployment sets replicas=%d; the HPA owns the replica count", *d.Spec.Replicas)
	}
	s := d.Spec.Strategy
	if s.Type != "RollingUpdate" || s.RollingUpdate == nil {
		t.Fatalf("strategy %q, want RollingUpdate", s.Type)
	}
	mu := s.RollingUpdate.MaxUnavailable
	if mu == nil || !(mu.String() == "0" || mu.String() == "0%") {
		t.Errorf("rollingUpdate.maxUnavailable = %v, want 0", mu)
	}
	if ms := s.RollingUpdate.MaxSurge; ms == nil || ms.String() == "0" || ms.String() == "0%" {
		t.Errorf("rollingUpdate.maxSurge = %v; with maxUnavailable 0 it must be positive", ms)
	}
}

// GOMAXPROCS and GOMEMLIMIT follow the container's resources, so resizing a
// pod in an overlay resizes the Go runtime with it.
func (b *bundle) checkResources(t *testing.T) {
	c := b.container(t)
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	wantRef := map[string]string{"GOMAXPROCS": "limits.cpu", "GOMEMLIMIT": "requests.memory"}
	for name, res := range wantRef {
		e, ok := env[name]
		if !ok || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil {
			t.Errorf("env %s: want valueFrom.resourceFieldRef %s", name, res)
			continue
		}
		ref := e.ValueFrom.ResourceFieldRef
		if ref.Resource != res || (ref.ContainerName != "" && ref.ContainerName != c.Name) {
			t.Errorf("env %s: resourceFieldRef %s of %q, want %s of kpush", name, ref.Resource, ref.ContainerName, res)
		}
		if !ref.Divisor.IsZero() && ref.Divisor.String() != "1" {
			t.Errorf("env %s: divisor %s; GOMAXPROCS wants cores and GOMEMLIMIT bytes (divisor 1)", name, ref.Divisor.String())
		}
	}
	r := c.Resources
	for _, q := range []struct {
		name string
		list corev1.ResourceList
		res  corev1.ResourceName
	}{
		{"requests.cpu", r.Requests, corev1.ResourceCPU},
		{"limits.cpu", r.Limits, corev1.ResourceCPU},
		{"requests.memory", r.Requests, corev1.ResourceMemory},
		{"limits.memory", r.Limits, corev1.ResourceMemory},
	} {
		if v, ok := q.list[q.res]; !ok || v.IsZero() {
			t.Errorf("resources.%s is not set", q.name)
		}
	}
	reqMem, limMem := r.Requests[corev1.ResourceMemory], r.Limits[corev1.ResourceMemory]
	if limMem.Cmp(reqMem) <= 0 {
		t.Errorf("limits.memory %s must exceed requests.memory %s (GOMEMLIMIT) to leave GC headroom", limMem.String(), reqMem.String())
	}
	// 25% headroom at most: more would let a pod hold memory the scheduler
	// never reserved.
	if float64(limMem.Value()) > 1.3*float64(reqMem.Value()) {
		t.Errorf("limits.memory %s is more than 1.3x requests.memory %s", limMem.String(), reqMem.String())
	}
	if !strings.Contains(c.Image, "/") || !strings.Contains(c.Image, ":") {
		t.Errorf("image %q: the images transformer did not set a registry and tag", c.Image)
	}
	if b.overlay == "prod" && strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("prod image %q must be pinned, not latest", c.Image)
	}
}

func (b *bundle) checkSecurity(t *testing.T) {
	ps := b.deployment.Spec.Template.Spec
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("pod mounts a service account token; kpush never calls the API")
	}
	if ps.ServiceAccountName != b.serviceAccount.Name {
		t.Errorf("serviceAccountName %q, want %q", ps.ServiceAccountName, b.serviceAccount.Name)
	}
	sc := ps.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != distrolessNonroot {
		t.Errorf("pod runAsUser must be %d (distroless nonroot)", distrolessNonroot)
	}
	if sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile is not RuntimeDefault")
	}
	csc := b.container(t).SecurityContext
	if csc == nil {
		t.Fatal("container has no securityContext")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}
	if csc.Privileged != nil && *csc.Privileged {
		t.Error("container is privileged")
	}
	if csc.Capabilities == nil || len(csc.Capabilities.Drop) != 1 || csc.Capabilities.Drop[0] != "ALL" || len(csc.Capabilities.Add) > 0 {
		t.Error("capabilities must drop ALL and add none")
	}
}

func (b *bundle) checkSpread(t *testing.T) {
	podLabels := labels.Set(b.deployment.Spec.Template.Labels)
	seen := map[string]bool{}
	for _, c := range b.deployment.Spec.Template.Spec.TopologySpreadConstraints {
		seen[c.TopologyKey] = true
		sel, err := metav1.LabelSelectorAsSelector(c.LabelSelector)
		if err != nil || c.LabelSelector == nil || !sel.Matches(podLabels) {
			t.Errorf("spread on %s: labelSelector does not select kpush pods", c.TopologyKey)
		}
		if c.MaxSkew != 1 {
			t.Errorf("spread on %s: maxSkew %d, want 1", c.TopologyKey, c.MaxSkew)
		}
	}
	for _, key := range []string{"kubernetes.io/hostname", "topology.kubernetes.io/zone"} {
		if !seen[key] {
			t.Errorf("no topology spread constraint on %s", key)
		}
	}
}

// The container must read the config file the ConfigMap generator produced,
// under its hashed name, from where the args say.
func (b *bundle) checkConfigMount(t *testing.T) {
	key, _, _ := b.configFile(t)
	c := b.container(t)
	var configPath string
	for i, a := range c.Args {
		if a == "-config" && i+1 < len(c.Args) {
			configPath = c.Args[i+1]
		}
	}
	if configPath == "" {
		t.Fatalf("args %v: no -config FILE", c.Args)
	}
	var volume string
	for _, m := range c.VolumeMounts {
		if m.MountPath == path.Dir(configPath) {
			volume = m.Name
			if !m.ReadOnly {
				t.Errorf("config mount %s is writable", m.MountPath)
			}
			if m.SubPath != "" {
				t.Errorf("config mount uses subPath, which never sees ConfigMap updates")
			}
		}
	}
	if volume == "" {
		t.Fatalf("no volume mounted at %s for -config %s", path.Dir(configPath), configPath)
	}
	if path.Base(configPath) != key {
		t.Errorf("-config %s, but the ConfigMap holds %s", configPath, key)
	}
	for _, v := range b.deployment.Spec.Template.Spec.Volumes {
		if v.Name != volume {
			continue
		}
		if v.ConfigMap == nil || v.ConfigMap.Name != b.configMap.Name {
			t.Errorf("volume %s does not reference ConfigMap %s (hash-suffixed by the generator)", volume, b.configMap.Name)
		}
		return
	}
	t.Errorf("volume %s is not defined", volume)
}

// Every selector that should find the kpush pods does, and the Deployment's
// own selector is satisfied by its template.
func (b *bundle) checkSelectors(t *testing.T) {
	podLabels := labels.Set(b.deployment.Spec.Template.Labels)
	match := func(what string, ls *metav1.LabelSelector) {
		t.Helper()
		if ls == nil || (len(ls.MatchLabels) == 0 && len(ls.MatchExpressions) == 0) {
			t.Errorf("%s: empty selector", what)
			return
		}
		sel, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if !sel.Matches(podLabels) {
			t.Errorf("%s selector %v does not match pod labels %v", what, sel, podLabels)
		}
	}
	match("Deployment", b.deployment.Spec.Selector)
	match("PodDisruptionBudget", b.pdb.Spec.Selector)
	match("NetworkPolicy", &b.netpol.Spec.PodSelector)
	for name, s := range b.services {
		if len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s: empty selector", name)
		} else if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s selector %v does not match pod labels %v", name, s.Spec.Selector, podLabels)
		}
	}
	if b.pdb.Spec.MaxUnavailable == nil || b.pdb.Spec.MaxUnavailable.String() != "1" {
		t.Errorf("PodDisruptionBudget maxUnavailable = %v, want 1", b.pdb.Spec.MaxUnavailable)
	}
}

func (b *bundle) publicService(t *testing.T) *corev1.Service {
	t.Helper()
	s, ok := b.services["kpush"]
	if !ok {
		t.Fatalf("no Service kpush; have %v", keys(b.services))
	}
	return s
}

func (b *bundle) checkServices(t *testing.T) {
	if len(b.services) != 2 {
		t.Errorf("Services %v, want kpush and kpush-admin", keys(b.services))
	}
	pub := b.publicService(t)
	// Any pod serves any channel: affinity would only skew load.
	if pub.Spec.SessionAffinity != "" && pub.Spec.SessionAffinity != corev1.ServiceAffinityNone {
		t.Errorf("Service kpush: sessionAffinity %s, want None", pub.Spec.SessionAffinity)
	}
	_, cfg, _ := b.configFile(t)
	adminPort := listenPort(t, "admin_listen", cfg.AdminListen)
	for name, s := range b.services {
		for _, p := range s.Spec.Ports {
			cp, ok := b.containerPort(t, p.TargetPort)
			if !ok {
				t.Errorf("Service %s port %s: targetPort %s is not a container port", name, p.Name, p.TargetPort.String())
				continue
			}
			if name == pub.Name && cp.ContainerPort == adminPort {
				t.Errorf("Service %s exposes the admin port; keep it on kpush-admin", name)
			}
		}
	}
}

func (b *bundle) checkIngress(t *testing.T) {
	ing := b.ingress
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
		t.Errorf("ingressClassName must be nginx (kubernetes/ingress-nginx)")
	}
	for k := range ing.Annotations {
		switch {
		case strings.Contains(k, "websocket-services"):
			t.Errorf("annotation %s belongs to NGINX Inc's controller, not ingress-nginx", k)
		case strings.HasPrefix(k, "nginx.org/") || strings.HasPrefix(k, "nginx.com/"):
			t.Errorf("annotation %s is for NGINX Inc's controller", k)
		case strings.Contains(k, "affinity") || strings.Contains(k, "upstream-hash-by"):
			t.Errorf("annotation %s pins clients to pods; any pod serves any channel", k)
		}
	}
	for _, k := range []string{"proxy-read-timeout", "proxy-send-timeout"} {
		v := ing.Annotations["nginx.ingress.kubernetes.io/"+k]
		n, err := strconv.Atoi(v)
		if err != nil || n < 3600 {
			t.Errorf("nginx.ingress.kubernetes.io/%s = %q, want seconds >= 3600 for long-lived WebSockets", k, v)
		}
	}
	tlsHosts := map[string]bool{}
	for _, tls := range ing.Spec.TLS {
		if tls.SecretName == "" {
			t.Error("TLS entry without secretName")
		}
		for _, h := range tls.Hosts {
			tlsHosts[h] = true
		}
	}
	_, cfg, _ := b.configFile(t)
	pub := b.publicService(t)
	endpoints := map[string]string{"gateway.path": cfg.Gateway.Path}
	for key, ep := range map[string]string{"gateway.sse_path": cfg.Gateway.SSEPath, "gateway.centrifugo_path": cfg.Gateway.CentrifugoPath} {
		if ep != pathOff {
			endpoints[key] = ep
		}
	}
	reached := map[string]bool{}
	for _, r := range ing.Spec.Rules {
		if !tlsHosts[r.Host] {
			t.Errorf("host %q has no TLS", r.Host)
		}
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			svc := p.Backend.Service
			if svc == nil || svc.Name != pub.Name {
				t.Errorf("path %s: backend is not Service %s", p.Path, pub.Name)
				continue
			}
			found := false
			for _, sp := range pub.Spec.Ports {
				if sp.Name == svc.Port.Name && svc.Port.Name != "" || sp.Port == svc.Port.Number && svc.Port.Number != 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("path %s: Service %s has no port %+v", p.Path, pub.Name, svc.Port)
			}
			for key, ep := range endpoints {
				if ingressPathReaches(p, ep) {
					reached[key] = true
				}
			}
		}
	}
	for key, ep := range endpoints {
		if !reached[key] {
			t.Errorf("no Ingress path reaches %s %s", key, ep)
		}
	}
	// Event streams must not wait in nginx's buffers.
	if v := ing.Annotations["nginx.ingress.kubernetes.io/proxy-buffering"]; endpoints["gateway.sse_path"] != "" && v != "off" {
		t.Errorf(`nginx.ingress.kubernetes.io/proxy-buffering = %q, want "off" for event streams`, v)
	}
}

// ingressPathReaches reports whether an Ingress path sends requests for
// target to its backend (Kubernetes' Exact and Prefix matching;
// ingress-nginx's ImplementationSpecific is treated as Prefix).
func ingressPathReaches(p networkingv1.HTTPIngressPath, target string) bool {
	if p.PathType != nil && *p.PathType == networkingv1.PathTypeExact {
		return p.Path == target
	}
	prefix := strings.TrimSuffix(p.Path, "/")
	return target == prefix || strings.HasPrefix(target, prefix+"/")
}

func (b *bundle) checkHPA(t *testing.T) {
	h := b.hpa
	ref := h.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != b.deployment.Name {
		t.Errorf("scaleTargetRef %s %s/%s, want apps/v1 Deployment/%s", ref.APIVersion, ref.Kind, ref.Name, b.deployment.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
		t.Errorf("minReplicas %v / maxReplicas %d out of order", h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	if b.overlay == "prod" && (h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 3) {
		t.Error("prod minReplicas must be >= 3, so a zone or node loss keeps two pods")
	}
	_, cfg, _ := b.configFile(t)
	var cpu, conns bool
	for _, m := range h.Spec.Metrics {
		switch {
		case m.Type == "Resource" && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU:
			cpu = true
			if u := m.Resource.Target.AverageUtilization; u == nil || *u <= 0 || *u > 90 {
				t.Errorf("cpu target averageUtilization %v, want 1..90", u)
			}
		case m.Type == "Pods" && m.Pods != nil && m.Pods.Metric.Name == "kpush_connections":
			conns = true
			v := m.Pods.Target.AverageValue
			if m.Pods.Target.Type != "AverageValue" || v == nil {
				t.Errorf("kpush_connections target must be an AverageValue per pod")
			} else if v.Value() <= 0 || v.Value() >= cfg.Gateway.MaxConnections {
				t.Errorf("kpush_connections target %s per pod must be below gateway.max_connections %d, or pods fill up before the HPA reacts", v.String(), cfg.Gateway.MaxConnections)
			}
		}
	}
	if !cpu || !conns {
		t.Errorf("metrics: cpu=%v kpush_connections=%v, want both", cpu, conns)
	}
	bh := h.Spec.Behavior
	if bh == nil || bh.ScaleDown == nil || bh.ScaleDown.StabilizationWindowSeconds == nil || *bh.ScaleDown.StabilizationWindowSeconds < 600 {
		t.Error("scaleDown.stabilizationWindowSeconds must be >= 600 so reconnect waves from draining pods do not cause flapping")
	}
	if bh != nil && bh.ScaleDown != nil {
		for _, p := range bh.ScaleDown.Policies {
			if p.Type == "Percent" || p.Value > 1 {
				t.Errorf("scaleDown policy %s %d: remove at most one pod per period", p.Type, p.Value)
			}
		}
		if len(bh.ScaleDown.Policies) == 0 {
			t.Error("scaleDown has no policy limiting the rate")
		}
	}
}

func (b *bundle) checkNetworkPolicy(t *testing.T) {
	np := b.netpol
	types := map[string]bool{}
	for _, pt := range np.Spec.PolicyTypes {
		types[string(pt)] = true
	}
	if !types["Ingress"] || !types["Egress"] {
		t.Errorf("policyTypes %v, want Ingress and Egress", np.Spec.PolicyTypes)
	}
	_, cfg, _ := b.configFile(t)
	wantIn := map[int32]bool{listenPort(t, "listen", cfg.Listen): true, listenPort(t, "admin_listen", cfg.AdminListen): true}
	gotIn := map[int32]bool{}
	for _, r := range np.Spec.Ingress {
		if len(r.From) == 0 {
			t.Error("ingress rule without from: allows every source")
		}
		if len(r.Ports) == 0 {
			t.Error("ingress rule without ports: allows every port")
		}
		for _, p := range r.Ports {
			if p.Port == nil {
				t.Error("ingress port without a number or name")
				continue
			}
			cp, ok := b.containerPort(t, *p.Port)
			if !ok {
				t.Errorf("ingress port %s is not a container port", p.Port.String())
				continue
			}
			gotIn[cp.ContainerPort] = true
		}
	}
	for p := range wantIn {
		if !gotIn[p] {
			t.Errorf("ingress does not admit port %d", p)
		}
	}
	for p := range gotIn {
		if !wantIn[p] {
			t.Errorf("ingress admits port %d, which kpush does not serve", p)
		}
	}
	dns := map[corev1.Protocol]bool{}
	for _, r := range np.Spec.Egress {
		if len(r.To) == 0 {
			t.Error("egress rule without to: allows every destination")
		}
		if len(r.Ports) == 0 {
			t.Error("egress rule without ports: allows every port")
		}
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.IntValue() == 53 && p.Protocol != nil {
				dns[*p.Protocol] = true
			}
		}
	}
	if !dns[corev1.ProtocolUDP] || !dns[corev1.ProtocolTCP] {
		t.Error("egress does not allow DNS on 53/UDP and 53/TCP")
	}
}

func (b *bundle) checkServiceMonitor(t *testing.T) {
	sm := b.serviceMonitor
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	var selected []string
	for name, s := range b.services {
		if sel.Matches(labels.Set(s.Labels)) {
			selected = append(selected, name)
		}
	}
	if len(selected) != 1 || selected[0] != "kpush-admin" {
		t.Fatalf("ServiceMonitor selects Services %v, want only kpush-admin", selected)
	}
	admin := b.services["kpush-admin"]
	if sm.Spec.JobLabel == "" || admin.Labels[sm.Spec.JobLabel] != "kpush" {
		t.Errorf("jobLabel %q must give job=\"kpush\", which the alerts select on", sm.Spec.JobLabel)
	}
	if len(sm.Spec.Endpoints) == 0 {
		t.Fatal("no endpoints")
	}
	for _, ep := range sm.Spec.Endpoints {
		found := false
		for _, p := range admin.Spec.Ports {
			if p.Name == ep.Port {
				found = true
			}
		}
		if !found {
			t.Errorf("endpoint port %q is not a port of kpush-admin", ep.Port)
		}
		if ep.Path != "" && ep.Path != "/metrics" {
			t.Errorf("endpoint path %q, kpush serves /metrics", ep.Path)
		}
	}
}

func (b *bundle) checkAlertRules(t *testing.T) {
	n := 0
	for _, g := range b.promRule.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s: no severity label", r.Alert)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: summary and description tell the operator what to do; one is missing", r.Alert)
			}
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
			}
			checkMetricNames(t, "alert "+r.Alert, r.Expr)
		}
	}
	if n < 5 {
		t.Errorf("only %d alerts", n)
	}
}
