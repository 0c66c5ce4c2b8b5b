package refconfig

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// StudyTokenKeyEnv is the environment variable every converted route takes
// its study token key from (one key for the whole server, as the
// reference's PATH_KEY).
const StudyTokenKeyEnv = "SMART_IMAGING_STUDY_TOKEN_KEY"

// ErrNotConverted: the config uses something that has no safe equivalent
// here (or not in this build).
var ErrNotConverted = errors.New("not converted")

// EnvVar is a secret the converted route reads from the environment.
type EnvVar struct {
	Name string
	// What says what to put in it.
	What string
}

// Route is the Caddyfile route of one reference tenant.
type Route struct {
	// Name is the tenant key (the config file's name without .json).
	Name string
	// Lines are the route's Caddyfile lines, indented from 0 with tabs.
	Lines []string
	// Env are the environment variables the route reads.
	Env []EnvVar
	// Notes say where the route differs from the reference on purpose.
	Notes []string
}

// Convert writes the Caddyfile route serving tenant name as the reference
// server did (/{name}/fhir/…, /{name}/wado/…), every secret replaced by an
// {env.…} placeholder it names. A config with no safe equivalent is an
// error wrapping ErrNotConverted that says why.
func Convert(name string, c *Config) (*Route, error) {
	if name == "" || strings.ContainsAny(name, "/ \t{}#\"") {
		return nil, fmt.Errorf("tenant name %q: want a plain path segment: %w", name, ErrNotConverted)
	}
	if err := noPlaceholders(c); err != nil {
		return nil, err
	}
	r := &Route{Name: name}
	prefix := envPrefix(name)
	a, im := c.Authorization, c.Images
	var authz []string
	unrestricted := false
	switch c.AuthzType() {
	case TypeMock:
		authz = append(authz, "authz mock {")
		if p := a.Patient; p != nil && p.ID != "" {
			authz = append(authz, "\tpatient "+quote(p.ID))
			mrns, system, err := c.MockMRNs()
			if err != nil {
				return nil, fmt.Errorf("%v: %w", err, ErrNotConverted)
			}
			if len(mrns) > 0 {
				authz = append(authz, "\tmrn "+quoteAll(mrns))
			}
			if system != "" {
				authz = append(authz, "\tmrn_system "+quote(system))
			}
		}
		if a.FHIRBaseURL != "" {
			authz = append(authz, "\tfhir_base_url "+quote(a.FHIRBaseURL))
		}
		if a.DisableAuthzChecks {
			unrestricted = true
			authz = append(authz, "\tdisable_authz_checks")
		} else if a.Patient == nil || a.Patient.ID == "" {
			return nil, fmt.Errorf("mock without a patient and with authz checks on lets no search through: %w", ErrNotConverted)
		}
		authz = append(authz, "}")
	case TypeSMART, TypeEpic, TypeMeditech:
		if a.FHIRBaseURL == "" {
			return nil, fmt.Errorf("authorization.fhirBaseUrl is required: %w", ErrNotConverted)
		}
		authz = append(authz, "authz smart-on-fhir {", "\tfhir_base_url "+quote(a.FHIRBaseURL))
		if cl := a.Client; cl != nil {
			if cl.ClientID != "" {
				authz = append(authz, "\tclient_id "+quote(cl.ClientID))
			}
			if len(cl.JWKPrivate) > 0 && string(cl.JWKPrivate) != "null" {
				v := prefix + "_PRIVATE_KEY"
				r.Env = append(r.Env, EnvVar{v, "the private JWK of authorization.client.jwkPrivate (JSON)"})
				authz = append(authz, "\tprivate_key {env."+v+"}")
				if cl.JWK != nil && cl.JWK.Alg != "" {
					authz = append(authz, "\tprivate_key_alg "+quote(cl.JWK.Alg))
				}
				if cl.JWK != nil && cl.JWK.Kid != "" {
					authz = append(authz, "\tprivate_key_id "+quote(cl.JWK.Kid))
				}
			} else if cl.ClientSecret != "" {
				v := prefix + "_CLIENT_SECRET"
				r.Env = append(r.Env, EnvVar{v, "authorization.client.client_secret"})
				authz = append(authz, "\tclient_secret {env."+v+"}")
			}
		}
		if s := c.BackendScope(); s != "" && s != DefaultBackendScope {
			authz = append(authz, "\tscope "+quote(s))
		}
		switch c.AuthzType() {
		case TypeEpic:
			if ep, ok := epicIntrospection(a.FHIRBaseURL); ok {
				authz = append(authz, "\tintrospection_endpoint "+quote(ep))
			} else {
				r.Notes = append(r.Notes, "Epic's discovery lists no introspection endpoint: set introspection_endpoint (the token endpoint with /token replaced by /introspect)")
			}
			authz = append(authz, "\tpatient_claim fhirUser", "\taccept_scopes patient/DiagnosticReport.read")
			r.Notes = append(r.Notes, "the Epic variant: introspection at the derived endpoint, the patient from the token's fhirUser, patient/DiagnosticReport.read accepted as the reference does")
		case TypeMeditech:
			authz = append(authz, "\taccept_scopes patient/DiagnosticReport.read")
			r.Notes = append(r.Notes, "the Meditech variant's workarounds are NOT carried over: the reference took the patient from the request's ?patient=, so any caller could name any patient; here the patient comes from the access token's introspection, as for smart-on-fhir")
		}
		if len(im.MRN) > 0 && !(len(im.MRN) == 1 && im.MRN[0] == DefaultMRNPath) {
			r.Notes = append(r.Notes, fmt.Sprintf("images.mrn %q picked the PACS PatientID with FHIRPath; here mrn_system names the identifier system(s) whose value is the PatientID: add mrn_system <system> to the authz block", strings.Join(im.MRN, ", ")))
		}
		authz = append(authz, "}")
	case TypeIndependent:
		return nil, fmt.Errorf("smart-on-fhir-independent (dual launch) needs registered apps, exact redirect URIs and a signing key the reference config does not have: write authz smart-on-fhir-independent by hand (README, dual launch): %w", ErrNotConverted)
	default:
		return nil, fmt.Errorf("authorization.type %q is unknown: %w", a.Type, ErrNotConverted)
	}

	var images []string
	switch im.Type {
	case ImagesDICOMweb:
		if im.Endpoint == "" {
			return nil, fmt.Errorf("images.endpoint is required: %w", ErrNotConverted)
		}
		images = append(images, "images dicomweb "+quote(im.Endpoint)+" {")
		switch im.Lookup {
		case LookupAll:
			if unrestricted {
				images = append(images, "\tlookup all-studies")
			} else {
				images = append(images, "\tlookup studies-by-mrn")
				r.Notes = append(r.Notes, "all-studies-on-server with patient binding on answered every patient's studies to the bound patient (a leak): the route looks the patient's studies up by MRN instead")
			}
		case "", LookupByMRN:
			images = append(images, "\tlookup studies-by-mrn")
		default:
			return nil, fmt.Errorf("images.lookup %q is unknown: %w", im.Lookup, ErrNotConverted)
		}
		if au := im.Authentication; au != nil && au.Type != "open" {
			u, p := prefix+"_PACS_USERNAME", prefix+"_PACS_PASSWORD"
			r.Env = append(r.Env, EnvVar{u, "images.authentication.username"}, EnvVar{p, "images.authentication.password"})
			images = append(images, "\tbasic_auth {env."+u+"} {env."+p+"}")
		}
		images = append(images, "}")
	case ImagesDIMSE:
		lines, notes, err := dimseImages(im, unrestricted)
		if err != nil {
			return nil, err
		}
		images = append(images, lines...)
		r.Notes = append(r.Notes, notes...)
	default:
		return nil, fmt.Errorf("images.type %q is unknown: %w", im.Type, ErrNotConverted)
	}

	body := append(authz, images...)
	body = append(body, "study_token_key {env."+StudyTokenKeyEnv+"}")
	if d := im.Delay; d != nil && (d.LookupUntil != nil || d.RetrieveUntil != nil) {
		body = append(body, "delay {")
		if d.LookupUntil != nil {
			body = append(body, "\tlookup_until "+DelayUntil(d.LookupUntil))
		}
		if d.RetrieveUntil != nil {
			body = append(body, "\tretrieve_until "+DelayUntil(d.RetrieveUntil))
		}
		body = append(body, "}")
	}
	r.Lines = append(r.Lines, "handle_path /"+name+"/* {", "\tsmart_imaging {")
	for _, l := range body {
		r.Lines = append(r.Lines, "\t\t"+l)
	}
	r.Lines = append(r.Lines, "\t}", "}")
	return r, nil
}

// dimseReceiverPort is where the reference's C-MOVE receiver listened
// (its DIMSE_PORT default): the PACS's modality entry for the reference's AE
// points there, so the converted route listens there too.
const dimseReceiverPort = "30104"

// dimseImages maps a dicom-dimse config onto images dimse. The reference
// ran findscu/movescu with its "ae" as calling AE and C-MOVE destination,
// and dcmtk's default called AE (ANY-SCP), and received C-MOVEs on
// DIMSE_PORT.
func dimseImages(im Images, unrestricted bool) (lines, notes []string, err error) {
	hostPort, ok := strings.CutPrefix(im.Endpoint, "dimse://")
	if !ok || hostPort == "" || strings.ContainsAny(hostPort, "/?#@ ") {
		return nil, nil, fmt.Errorf("images.endpoint %q: want dimse://host:port: %w", im.Endpoint, ErrNotConverted)
	}
	if im.AE == "" || len(im.AE) > 16 || strings.ContainsAny(im.AE, "\\{}\" ") {
		return nil, nil, fmt.Errorf("images.ae %q: want the AE title the PACS sends C-MOVEs to (1 to 16 characters): %w", im.AE, ErrNotConverted)
	}
	if im.Retrieval != "" && im.Retrieval != "c-move" {
		return nil, nil, fmt.Errorf("images.retrieval %q: the reference only did c-move: %w", im.Retrieval, ErrNotConverted)
	}
	lines = []string{"images dimse " + hostPort + " {",
		"	called_ae ANY-SCP",
		"	calling_ae " + im.AE,
		"	retrieve c-move",
		"	move_destination " + im.AE,
		"	listen :" + dimseReceiverPort}
	switch im.Lookup {
	case LookupAll:
		if unrestricted {
			lines = append(lines, "	lookup all-studies")
		} else {
			lines = append(lines, "	lookup studies-by-mrn")
		}
	case "", LookupByMRN:
		lines = append(lines, "	lookup studies-by-mrn")
	default:
		return nil, nil, fmt.Errorf("images.lookup %q is unknown: %w", im.Lookup, ErrNotConverted)
	}
	lines = append(lines, "}")
	notes = []string{"the PACS must list AE " + im.AE + " at this server's address, port " + dimseReceiverPort +
		", as the reference's was; called_ae ANY-SCP is what the reference's dcmtk tools sent: set the PACS's own AE title if it checks it"}
	return lines, notes, nil
}

// noPlaceholders refuses values that Caddy would read as placeholders in
// the printed route ({env.…}, {file.…}): a value is copied as it is or not
// at all.
func noPlaceholders(c *Config) error {
	a, im := c.Authorization, c.Images
	vals := map[string]string{"authorization.fhirBaseUrl": a.FHIRBaseURL, "authorization.scope": c.BackendScope(),
		"images.endpoint": im.Endpoint}
	if a.Client != nil {
		vals["authorization.client.client_id"] = a.Client.ClientID
		if a.Client.JWK != nil {
			vals["authorization.client.jwk.alg"], vals["authorization.client.jwk.kid"] = a.Client.JWK.Alg, a.Client.JWK.Kid
		}
	}
	if a.Patient != nil {
		vals["authorization.patient.id"] = a.Patient.ID
		for i, id := range a.Patient.Identifier {
			vals[fmt.Sprintf("authorization.patient.identifier[%d]", i)] = id.System + id.Value
		}
	}
	for field, v := range vals {
		if strings.ContainsAny(v, "{}\n\r") {
			return fmt.Errorf("%s holds a brace or a line break, which the Caddyfile would not copy as it is: %w", field, ErrNotConverted)
		}
	}
	return nil
}

// epicIntrospection derives Epic's introspection endpoint from its FHIR
// base (…/api/FHIR/R4 → …/oauth2/introspect), as the reference derived it
// from the token endpoint.
func epicIntrospection(fhirBase string) (string, bool) {
	i := strings.Index(fhirBase, "/api/FHIR/")
	if i < 0 {
		return "", false
	}
	return fhirBase[:i] + "/oauth2/introspect", true
}

// Caddyfile writes a whole Caddyfile: a site at address with the routes,
// the environment they need listed at the top, and a comment in place of
// each config that was not converted.
func Caddyfile(address string, routes []*Route, failed map[string]error) string {
	var b strings.Builder
	b.WriteString("# Written by `caddy smart-imaging import` from the reference server's configs.\n")
	env := map[string]string{StudyTokenKeyEnv: "base64 of 32 random bytes (openssl rand -base64 32): the study token key"}
	for _, r := range routes {
		for _, e := range r.Env {
			env[e.Name] = e.What + " of " + r.Name
		}
	}
	names := make([]string, 0, len(env))
	for n := range env {
		names = append(names, n)
	}
	sort.Strings(names)
	b.WriteString("# Set these environment variables before starting Caddy:\n")
	for _, n := range names {
		b.WriteString("#   " + n + ": " + env[n] + "\n")
	}
	b.WriteString(address + " {\n")
	first := true
	for _, r := range routes {
		if !first {
			b.WriteString("\n")
		}
		first = false
		for _, n := range r.Notes {
			b.WriteString("\t# " + r.Name + ": " + n + "\n")
		}
		for _, l := range r.Lines {
			b.WriteString("\t" + l + "\n")
		}
	}
	failedNames := make([]string, 0, len(failed))
	for n := range failed {
		failedNames = append(failedNames, n)
	}
	sort.Strings(failedNames)
	for _, n := range failedNames {
		if !first {
			b.WriteString("\n")
		}
		first = false
		b.WriteString("\t# " + n + " was not converted: " + strings.ReplaceAll(failed[n].Error(), "\n", " ") + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func envPrefix(name string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(name) {
		if c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// quote writes a Caddyfile token, quoted when it holds spaces or quotes.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"{}#\n") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func quoteAll(ss []string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = quote(s)
	}
	return strings.Join(out, " ")
}
