package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/internal/dynconfig"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("smart_imaging", parseCaddyfile)
	// Terminal, like reverse_proxy: it answers everything under its route.
	httpcaddyfile.RegisterDirectiveOrder("smart_imaging", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	smart_imaging [<matcher>] {
//		authz mock {
//			patient <id>
//			mrn <pacs patient id>...
//			fhir_base_url <url>
//			disable_authz_checks
//		}
//		authz smart-on-fhir { … }
//
//		images folder <dir> {
//			lookup studies-by-mrn|all-studies
//		}
//		images dicomweb <base url> { … }
//
//		study_token_key <base64 32 bytes> [<previous key>...]
//		study_token_ttl <duration>
//		study_token_binding token|grant
//		base_url <public url of this route>
//		route_id <name>
//		cors <origin>...|*
//		max_render_size <pixels>
//		delay {
//			lookup_until <RFC 3339 instant | duration after start>
//			retrieve_until <RFC 3339 instant | duration after start>
//		}
//		dynamic_config {
//			allow_hosts <host[:port]>...
//			allow_ehr_hosts <host[:port]>...
//			allow_pacs_hosts <host[:port]>...
//			credentials <host[:port]> basic <user> <password>
//			credentials <host[:port]> bearer <token>
//			credentials <host[:port]> client_secret <client id> <secret>
//			credentials <host[:port]> private_key <client id> <file|JWK|PEM>
//			allow_url_credentials
//			authz smart-on-fhir { <any option but fhir_base_url, client_id and keys> }
//			allow_mock
//			max_configs <n>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	var warnings []caddyconfig.Warning
	for d.NextBlock(0) {
		switch d.Val() {
		case "authz":
			if h.AuthzRaw != nil {
				return d.Err("authz is already set for this route")
			}
			if !d.NextArg() {
				return d.Errf("authz needs a kind: mock or smart-on-fhir")
			}
			kind := d.Val()
			if err := knownKind(d, "http.handlers.smart_imaging.authz", kind); err != nil {
				return err
			}
			mod, err := caddyfile.UnmarshalModule(d, "http.handlers.smart_imaging.authz."+kind)
			if err != nil {
				return d.Errf("authz %s: %v", kind, err)
			}
			h.AuthzRaw = caddyconfig.JSONModuleObject(mod, "kind", kind, &warnings)
		case "images":
			if h.ImagesRaw != nil {
				return d.Err("images is already set for this route")
			}
			if !d.NextArg() {
				return d.Errf("images needs a kind: folder or dicomweb")
			}
			kind := d.Val()
			if err := knownKind(d, "http.handlers.smart_imaging.images", kind); err != nil {
				return err
			}
			mod, err := caddyfile.UnmarshalModule(d, "http.handlers.smart_imaging.images."+kind)
			if err != nil {
				return d.Errf("images %s: %v", kind, err)
			}
			h.ImagesRaw = caddyconfig.JSONModuleObject(mod, "kind", kind, &warnings)
		case "study_token_key":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.StudyTokenKey, h.StudyTokenPreviousKeys = args[0], args[1:]
		case "study_token_ttl":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("study_token_ttl: %v", err)
			}
			h.StudyTokenTTL = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "study_token_binding":
			if err := parseStudyTokenBinding(d, h); err != nil {
				return err
			}
		case "base_url":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.BaseURL = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "route_id":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.RouteID = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "cors":
			origins := d.RemainingArgs()
			if len(origins) == 0 {
				return d.Err("cors needs at least one origin (https://viewer.example.org) or *")
			}
			for _, o := range origins {
				if !validOrigin(o) {
					return d.Errf("cors: %q is not an origin; use scheme://host[:port] or *", o)
				}
			}
			h.CORS = append(h.CORS, origins...)
		case "max_render_size":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < imagesource.MinMaxRenderSize || n > imagesource.MaxImageSide {
				return d.Errf("max_render_size: want a number of pixels from %d to %d, got %q", imagesource.MinMaxRenderSize, imagesource.MaxImageSide, d.Val())
			}
			h.MaxRenderSize = n
			if d.NextArg() {
				return d.ArgErr()
			}
		case "delay":
			if h.Delay != nil {
				return d.Err("delay is already set for this route")
			}
			c, err := unmarshalDelay(d)
			if err != nil {
				return err
			}
			h.Delay = c
		case "dynamic_config":
			if h.Dynamic != nil {
				return d.Err("dynamic_config is already set for this route")
			}
			h.Dynamic = &DynamicConfig{}
			if d.NextArg() {
				return d.ArgErr()
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				switch d.Val() {
				case "allow_hosts", "allow_ehr_hosts", "allow_pacs_hosts":
					opt := d.Val()
					hosts := d.RemainingArgs()
					if len(hosts) == 0 {
						return d.ArgErr()
					}
					dst := map[string]*[]string{"allow_hosts": &h.Dynamic.AllowHosts, "allow_ehr_hosts": &h.Dynamic.AllowEHRHosts,
						"allow_pacs_hosts": &h.Dynamic.AllowPACSHosts}[opt]
					*dst = append(*dst, hosts...)
				case "allow_mock":
					if d.NextArg() {
						return d.ArgErr()
					}
					h.Dynamic.AllowMock = true
				case "max_configs":
					if !d.NextArg() {
						return d.ArgErr()
					}
					n, err := strconv.Atoi(d.Val())
					if err != nil || n < 1 {
						return d.Errf("max_configs: want a positive integer, got %q", d.Val())
					}
					h.Dynamic.MaxConfigs = n
				case "credentials":
					c, err := parseDynamicCredential(d)
					if err != nil {
						return err
					}
					h.Dynamic.Credentials = append(h.Dynamic.Credentials, c)
				case "allow_url_credentials":
					if d.NextArg() {
						return d.ArgErr()
					}
					h.Dynamic.AllowURLCredentials = true
				case "authz":
					if h.Dynamic.SMART != nil {
						return d.Err("dynamic_config: authz is already set")
					}
					if !d.NextArg() || d.Val() != "smart-on-fhir" {
						return d.Err("dynamic_config: authz smart-on-fhir { … } sets the policy of smart-on-fhir tenants")
					}
					mod, err := caddyfile.UnmarshalModule(d, "http.handlers.smart_imaging.authz.smart-on-fhir")
					if err != nil {
						return d.Errf("dynamic_config: authz smart-on-fhir: %v", err)
					}
					cfg := mod.(*SmartAuthz).Config
					if err := checkSMARTPolicy(cfg); err != nil {
						return d.Errf("dynamic_config: authz smart-on-fhir: %v", err)
					}
					h.Dynamic.SMART = &cfg
				default:
					return d.Errf("unrecognized dynamic_config option '%s' (known: allow_hosts, allow_ehr_hosts, allow_pacs_hosts, credentials, allow_url_credentials, authz, allow_mock, max_configs)", d.Val())
				}
			}
			if len(h.Dynamic.AllowHosts)+len(h.Dynamic.AllowEHRHosts)+len(h.Dynamic.AllowPACSHosts) == 0 {
				return d.Err("dynamic_config needs allow_hosts (or allow_ehr_hosts and allow_pacs_hosts): the EHR and PACS hosts dynamic configs may use")
			}
		default:
			return d.Errf("unrecognized smart_imaging option '%s' (known: authz, images, study_token_key, study_token_ttl, study_token_binding, base_url, route_id, cors, max_render_size, delay, dynamic_config)", d.Val())
		}
	}
	return nil
}

// parseDynamicCredential reads the arguments of a dynamic_config
// credentials line: <host> basic <user> <password> | bearer <token> |
// client_secret <client id> <secret> | private_key <client id> <key>.
func parseDynamicCredential(d *caddyfile.Dispenser) (dynconfig.Credential, error) {
	args := d.RemainingArgs()
	usage := "credentials <host[:port]> basic <user> <password> | bearer <token> | client_secret <client id> <secret> | private_key <client id> <file|JWK|PEM>"
	if len(args) < 3 {
		return dynconfig.Credential{}, d.Errf("dynamic_config: %s", usage)
	}
	c := dynconfig.Credential{Host: args[0], Kind: args[1]}
	v := args[2:]
	switch {
	case c.Kind == dynconfig.CredBasic && len(v) == 2:
		c.Username, c.Password = v[0], v[1]
	case c.Kind == dynconfig.CredBearer && len(v) == 1:
		c.Token = v[0]
	case c.Kind == dynconfig.CredClientSecret && len(v) == 2:
		c.ClientID, c.ClientSecret = v[0], v[1]
	case c.Kind == dynconfig.CredPrivateKey && len(v) == 2:
		c.ClientID, c.PrivateKey = v[0], v[1]
	default:
		return dynconfig.Credential{}, d.Errf("dynamic_config: %s", usage)
	}
	return c, nil
}

// Interface guard.

// knownKind checks that kind names a module of the namespace, listing the
// known kinds when it does not.
func knownKind(d *caddyfile.Dispenser, namespace, kind string) error {
	if _, err := caddy.GetModule(namespace + "." + kind); err == nil {
		return nil
	}
	var kinds []string
	for _, m := range caddy.GetModules(namespace) {
		kinds = append(kinds, m.ID.Name())
	}
	return d.Errf("%s %s: unknown kind (known: %s)", namespace[strings.LastIndex(namespace, ".")+1:], kind, strings.Join(kinds, ", "))
}

// parseStudyTokenBinding reads study_token_binding token|grant.
func parseStudyTokenBinding(d *caddyfile.Dispenser, h *Handler) error {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.ArgErr()
	}
	if _, err := studytoken.ParseBinding(args[0]); err != nil {
		return d.Err(err.Error())
	}
	h.StudyTokenBinding = args[0]
	return nil
}
