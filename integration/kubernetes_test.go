package integration

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
)

// The parts of the Kubernetes objects the test looks at. No cluster runs
// here: the manifests are parsed and checked against each other, the
// Caddyfile in the ConfigMap and xcaddy.Dockerfile.

type k8sMeta struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

type k8sObject struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   k8sMeta           `yaml:"metadata"`
	Spec       yaml.Node         `yaml:"spec"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Resources  []string          `yaml:"resources"` // Kustomization
	file       string
}

type k8sSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type k8sSecurityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"` // a name or a number, as text
	} `yaml:"httpGet"`
	TimeoutSeconds int `yaml:"timeoutSeconds"`
}

type k8sEnv struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef *struct {
			Name string `yaml:"name"`
			Key  string `yaml:"key"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type k8sKeyPath struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env            []k8sEnv  `yaml:"env"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext k8sSecurityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type k8sVolume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name  string       `yaml:"name"`
		Items []k8sKeyPath `yaml:"items"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName string       `yaml:"secretName"`
		Items      []k8sKeyPath `yaml:"items"`
	} `yaml:"secret"`
	EmptyDir *struct{} `yaml:"emptyDir"`
}

type k8sDeploymentSpec struct {
	Replicas *int        `yaml:"replicas"`
	Selector k8sSelector `yaml:"selector"`
	Strategy struct {
		Type          string `yaml:"type"`
		RollingUpdate struct {
			MaxUnavailable string `yaml:"maxUnavailable"`
		} `yaml:"rollingUpdate"`
	} `yaml:"strategy"`
	Template struct {
		Metadata k8sMeta `yaml:"metadata"`
		Spec     struct {
			TerminationGracePeriodSeconds *int               `yaml:"terminationGracePeriodSeconds"`
			SecurityContext               k8sSecurityContext `yaml:"securityContext"`
			Containers                    []k8sContainer     `yaml:"containers"`
			Volumes                       []k8sVolume        `yaml:"volumes"`
		} `yaml:"spec"`
	} `yaml:"template"`
}

type k8sServiceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []struct {
		Port       int    `yaml:"port"`
		TargetPort string `yaml:"targetPort"`
	} `yaml:"ports"`
}

type k8sPDBSpec struct {
	MaxUnavailable string      `yaml:"maxUnavailable"`
	MinAvailable   string      `yaml:"minAvailable"`
	Selector       k8sSelector `yaml:"selector"`
}

const k8sDir = "../examples/kubernetes"

// loadManifests decodes every YAML document under examples/kubernetes.
func loadManifests(t *testing.T) (map[string]*k8sObject, []string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	byKind := map[string]*k8sObject{}
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(r)
		for {
			var o k8sObject
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: not valid YAML: %v", f, err)
			}
			if o.Kind == "" || o.APIVersion == "" {
				t.Errorf("%s: a document without kind or apiVersion", f)
				continue
			}
			if byKind[o.Kind] != nil {
				t.Errorf("%s: a second %s (the test expects one of each kind)", f, o.Kind)
			}
			o.file = filepath.Base(f)
			byKind[o.Kind] = &o
		}
		r.Close()
	}
	for i := range files {
		files[i] = filepath.Base(files[i])
	}
	return byKind, files
}

func decodeSpec(t *testing.T, o *k8sObject, into any) {
	t.Helper()
	if o == nil {
		t.Fatalf("missing manifest")
	}
	if err := o.Spec.Decode(into); err != nil {
		t.Fatalf("%s: %s spec: %v", o.file, o.Kind, err)
	}
}

// quantityBytes reads a Kubernetes memory quantity (128Mi, 1Gi, 500M, …).
func quantityBytes(q string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(q, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseInt(q, 10, 64)
}

// labelsMatch reports whether every selector label is on the pod.
func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// caddyDuration finds `<option> <duration>` in a Caddyfile (0 if absent).
func caddyDuration(t *testing.T, caddyfile, option string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + option + `\s+(\S+)\s*$`).FindStringSubmatch(caddyfile)
	if m == nil {
		return 0
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("%s %q in the ConfigMap Caddyfile: %v", option, m[1], err)
	}
	return d
}

// TestKubernetesManifests checks examples/kubernetes: several replicas,
// probes on the route's health endpoints, keys and PACS credentials from
// the Secret, a non-root pod, resources, and manifests that agree with each
// other, with the Caddyfile they mount and with xcaddy.Dockerfile.
func TestKubernetesManifests(t *testing.T) {
	objs, files := loadManifests(t)
	for _, kind := range []string{"Deployment", "Service", "Secret", "ConfigMap", "PodDisruptionBudget", "Kustomization"} {
		if objs[kind] == nil {
			t.Fatalf("examples/kubernetes has no %s", kind)
		}
	}

	t.Run("kustomization lists every manifest", func(t *testing.T) {
		var want []string
		for _, f := range files {
			if f != "kustomization.yaml" {
				want = append(want, f)
			}
		}
		got := slices.Clone(objs["Kustomization"].Resources)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("kustomization resources %v, want %v", got, want)
		}
	})

	var dep k8sDeploymentSpec
	decodeSpec(t, objs["Deployment"], &dep)
	pod := dep.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("the pod has %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	secret := objs["Secret"]
	cm := objs["ConfigMap"]
	caddyfile := cm.Data["Caddyfile"]
	if caddyfile == "" {
		t.Fatalf("ConfigMap %s has no Caddyfile", cm.Metadata.Name)
	}
	m := regexp.MustCompile(`handle_path\s+/([A-Za-z0-9_-]+)/\*`).FindStringSubmatch(caddyfile)
	if m == nil {
		t.Fatal("the ConfigMap Caddyfile has no handle_path /<route>/* block")
	}
	route := "/" + m[1]

	t.Run("several replicas, rolled without losing capacity", func(t *testing.T) {
		if dep.Replicas == nil || *dep.Replicas < 2 {
			t.Errorf("replicas = %v, want 2 or more", dep.Replicas)
		}
		if dep.Strategy.Type != "RollingUpdate" || dep.Strategy.RollingUpdate.MaxUnavailable != "0" {
			t.Errorf("strategy %+v, want RollingUpdate with maxUnavailable 0", dep.Strategy)
		}
		if !labelsMatch(dep.Selector.MatchLabels, dep.Template.Metadata.Labels) {
			t.Errorf("the Deployment selector %v does not match its pods %v", dep.Selector.MatchLabels, dep.Template.Metadata.Labels)
		}
	})

	t.Run("caddy runs the mounted Caddyfile", func(t *testing.T) {
		if want := []string{"caddy", "run", "--config", "/etc/caddy/Caddyfile"}; !slices.Equal(c.Args, want) {
			t.Errorf("args %q, want %q", c.Args, want)
		}
		if c.Image == "" {
			t.Error("no image")
		}
		mounted := false
		for _, vm := range c.VolumeMounts {
			if vm.MountPath != "/etc/caddy" {
				continue
			}
			for _, v := range pod.Volumes {
				if v.Name == vm.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name {
					mounted = len(v.ConfigMap.Items) == 0 || slices.Contains(v.ConfigMap.Items, k8sKeyPath{Key: "Caddyfile", Path: "Caddyfile"})
				}
			}
		}
		if !mounted {
			t.Errorf("ConfigMap %s is not mounted at /etc/caddy with its Caddyfile", cm.Metadata.Name)
		}
	})

	portOK := func(p string) bool {
		for _, cp := range c.Ports {
			if p == cp.Name || p == strconv.Itoa(cp.ContainerPort) {
				return cp.ContainerPort == 8080 // the Caddyfile's site
			}
		}
		return false
	}

	t.Run("probes on the health endpoints", func(t *testing.T) {
		if !strings.Contains(caddyfile, ":8080 {") {
			t.Fatal("the ConfigMap Caddyfile does not serve :8080")
		}
		for name, want := range map[string]struct {
			p    *k8sProbe
			path string
		}{
			"livenessProbe":  {c.LivenessProbe, route + "/health/live"},
			"readinessProbe": {c.ReadinessProbe, route + "/health/ready"},
		} {
			if want.p == nil || want.p.HTTPGet == nil {
				t.Errorf("%s: missing or not httpGet", name)
				continue
			}
			if want.p.HTTPGet.Path != want.path || !portOK(want.p.HTTPGet.Port) {
				t.Errorf("%s: GET %s on port %s, want %s on the port serving :8080", name, want.p.HTTPGet.Path, want.p.HTTPGet.Port, want.path)
			}
		}
		// The readiness check gives up after 5s; the probe must wait that long.
		if c.ReadinessProbe != nil && c.ReadinessProbe.TimeoutSeconds <= 5 {
			t.Errorf("readinessProbe timeoutSeconds %d, want more than the 5s the check may take", c.ReadinessProbe.TimeoutSeconds)
		}
	})

	t.Run("keys and credentials come from the Secret", func(t *testing.T) {
		env := map[string]k8sEnv{}
		for _, e := range c.Env {
			env[e.Name] = e
		}
		for _, name := range []string{"SMART_IMAGING_KEY", "SMART_IMAGING_PREVIOUS_KEY", "PACS_USER", "PACS_PASSWORD"} {
			e, ok := env[name]
			if !ok || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("env %s is not taken from a Secret (%+v)", name, e)
				continue
			}
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != secret.Metadata.Name {
				t.Errorf("env %s comes from Secret %q, the manifests define %q", name, ref.Name, secret.Metadata.Name)
			}
			if _, ok := secret.StringData[ref.Key]; !ok {
				t.Errorf("env %s names key %q, which Secret %s does not hold", name, ref.Key, secret.Metadata.Name)
			}
		}
		// Every {env.X} of the Caddyfile is set in the container.
		for _, m := range regexp.MustCompile(`\{env\.([A-Za-z0-9_]+)\}`).FindAllStringSubmatch(caddyfile, -1) {
			if _, ok := env[m[1]]; !ok {
				t.Errorf("the Caddyfile reads {env.%s}, which the container does not set", m[1])
			}
		}
		if !regexp.MustCompile(`study_token_key\s+\{env\.SMART_IMAGING_KEY\}`).MatchString(caddyfile) {
			t.Error("the Caddyfile does not take study_token_key from {env.SMART_IMAGING_KEY}")
		}
		// The committed Secret holds placeholders, never a usable key.
		for _, k := range []string{"study-token-key", "study-token-previous-key"} {
			if _, err := studytoken.ParseKey(secret.StringData[k]); err == nil {
				t.Errorf("secret.yaml %s is a usable key; commit a placeholder", k)
			}
		}
		// The private_key file is mounted from the Secret.
		if m := regexp.MustCompile(`private_key\s+(\S+)`).FindStringSubmatch(caddyfile); m != nil {
			dir, file := filepath.Dir(m[1]), filepath.Base(m[1])
			found := false
			for _, vm := range c.VolumeMounts {
				for _, v := range pod.Volumes {
					if vm.MountPath != dir || v.Name != vm.Name || v.Secret == nil || v.Secret.SecretName != secret.Metadata.Name {
						continue
					}
					for _, it := range v.Secret.Items {
						_, held := secret.StringData[it.Key]
						found = found || (it.Path == file && held)
					}
				}
			}
			if !found {
				t.Errorf("private_key %s is not mounted from Secret %s", m[1], secret.Metadata.Name)
			}
		}
	})

	t.Run("the access log hides study tokens and /dyn segments", func(t *testing.T) {
		if !regexp.MustCompile(`(?m)^\s*log\b`).MatchString(caddyfile) {
			return // no access log
		}
		m := regexp.MustCompile(`request>uri\s+regexp\s+"([^"]+)"\s+"([^"]*)"`).FindStringSubmatch(caddyfile)
		if m == nil {
			t.Fatal("the Caddyfile writes an access log without a request>uri regexp filter; WADO addresses carry study tokens")
		}
		re, err := regexp.Compile(m[1])
		if err != nil {
			t.Fatalf("the request>uri filter %q: %v", m[1], err)
		}
		const token = "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..aXY.Y3Q.dGFn"
		if got := re.ReplaceAllString(route+"/wado/"+token+"/studies/1.2.3", m[2]); strings.Contains(got, token) || !strings.Contains(got, "/wado/") {
			t.Errorf("the access log filter leaves the study token in %s (or loses the path)", got)
		}
		// A /dyn segment is a whole tenant config (credentials, where a
		// route accepts them in URLs).
		const seg = "eyJhdXRoeiI6eyJraW5kIjoic21hcnQtb24tZmhpciJ9fQ"
		for _, u := range []string{route + "/dyn/" + seg + "/fhir/ImagingStudy?patient=1", route + "/dyn/" + seg + "/wado/" + token + "/studies/1.2.3"} {
			if got := re.ReplaceAllString(u, m[2]); strings.Contains(got, seg) || strings.Contains(got, token) {
				t.Errorf("the access log filter leaves a /dyn segment or a study token in %s", got)
			}
		}
	})

	t.Run("non-root and locked down", func(t *testing.T) {
		psc, csc := pod.SecurityContext, c.SecurityContext
		nonRoot := (psc.RunAsNonRoot != nil && *psc.RunAsNonRoot) || (csc.RunAsNonRoot != nil && *csc.RunAsNonRoot)
		uid := psc.RunAsUser
		if csc.RunAsUser != nil {
			uid = csc.RunAsUser
		}
		if !nonRoot || uid == nil || *uid == 0 {
			t.Errorf("runAsNonRoot %v, runAsUser %v: want a non-root user", nonRoot, uid)
		}
		df, err := os.ReadFile("../xcaddy.Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		if m := regexp.MustCompile(`--uid (\d+)`).FindSubmatch(df); m == nil || uid == nil || string(m[1]) != strconv.FormatInt(*uid, 10) {
			t.Errorf("runAsUser %v is not the user xcaddy.Dockerfile creates (%s)", uid, m)
		}
		if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if !slices.Contains(csc.Capabilities.Drop, "ALL") {
			t.Errorf("capabilities drop %v, want ALL", csc.Capabilities.Drop)
		}
		if csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem {
			// Caddy writes under XDG_CONFIG_HOME / XDG_DATA_HOME.
			m := regexp.MustCompile(`XDG_CONFIG_HOME=(\S+)`).FindSubmatch(df)
			writable := false
			for _, vm := range c.VolumeMounts {
				for _, v := range pod.Volumes {
					if v.Name == vm.Name && v.EmptyDir != nil && m != nil && strings.HasPrefix(string(m[1]), vm.MountPath+"/") {
						writable = true
					}
				}
			}
			if !writable {
				t.Errorf("the root file system is read-only and no emptyDir covers XDG_CONFIG_HOME (%s)", m)
			}
		}
	})

	t.Run("resources set", func(t *testing.T) {
		req, lim := c.Resources.Requests, c.Resources.Limits
		if req["cpu"] == "" || req["memory"] == "" || lim["memory"] == "" {
			t.Fatalf("resources requests %v limits %v: want cpu and memory requests and a memory limit", req, lim)
		}
		r, err1 := quantityBytes(req["memory"])
		l, err2 := quantityBytes(lim["memory"])
		if err1 != nil || err2 != nil || r <= 0 || r > l {
			t.Errorf("memory request %s, limit %s: want 0 < request <= limit", req["memory"], lim["memory"])
		}
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				g, err := quantityBytes(strings.TrimSuffix(e.Value, "B"))
				if err != nil || g >= l {
					t.Errorf("GOMEMLIMIT %s is not below the memory limit %s", e.Value, lim["memory"])
				}
			}
		}
	})

	t.Run("pods outlive their shutdown", func(t *testing.T) {
		need := caddyDuration(t, caddyfile, "grace_period") + caddyDuration(t, caddyfile, "shutdown_delay")
		tg := pod.TerminationGracePeriodSeconds
		if tg == nil || time.Duration(*tg)*time.Second <= need {
			t.Errorf("terminationGracePeriodSeconds %v, want more than grace_period + shutdown_delay (%v)", tg, need)
		}
	})

	t.Run("service and disruption budget select the pods", func(t *testing.T) {
		var svc k8sServiceSpec
		decodeSpec(t, objs["Service"], &svc)
		if !labelsMatch(svc.Selector, dep.Template.Metadata.Labels) {
			t.Errorf("Service selector %v does not match the pods %v", svc.Selector, dep.Template.Metadata.Labels)
		}
		if len(svc.Ports) == 0 || !portOK(svc.Ports[0].TargetPort) {
			t.Errorf("Service ports %+v do not reach the container's :8080", svc.Ports)
		}
		var pdb k8sPDBSpec
		decodeSpec(t, objs["PodDisruptionBudget"], &pdb)
		if !labelsMatch(pdb.Selector.MatchLabels, dep.Template.Metadata.Labels) {
			t.Errorf("PodDisruptionBudget selector %v does not match the pods", pdb.Selector.MatchLabels)
		}
		replicas := 0
		if dep.Replicas != nil {
			replicas = *dep.Replicas
		}
		switch {
		case pdb.MaxUnavailable != "":
			n, err := strconv.Atoi(pdb.MaxUnavailable)
			if err != nil || n < 1 || n >= replicas {
				t.Errorf("PodDisruptionBudget maxUnavailable %s with %d replicas", pdb.MaxUnavailable, replicas)
			}
		case pdb.MinAvailable != "":
			n, err := strconv.Atoi(pdb.MinAvailable)
			if err != nil || n < 1 || n >= replicas {
				t.Errorf("PodDisruptionBudget minAvailable %s with %d replicas", pdb.MinAvailable, replicas)
			}
		default:
			t.Error("PodDisruptionBudget sets neither maxUnavailable nor minAvailable")
		}
	})
}
