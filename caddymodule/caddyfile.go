package caddymodule

import (
	"encoding/json"
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
//		metadata_cache {
//			size <bytes>
//			ttl <duration>
//		}
//		delay {
//			lookup_until <RFC 3339 instant | duration after start>
//			retrieve_until <RFC 3339 instant | duration after start>
//		}
//		dicomweb_root
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
//			metadata_cache { size <bytes>  ttl <duration> }
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return h.subdirectives().parseBlock(d, "smart_imaging")
}

// subdirectives is the table of the handler's options.
func (h *Handler) subdirectives() subdirectives {
	return subdirectives{
		{"authz", guestModule(&h.AuthzRaw, "authz", "mock or smart-on-fhir", "http.handlers.smart_imaging.authz")},
		{"images", guestModule(&h.ImagesRaw, "images", "folder or dicomweb", "http.handlers.smart_imaging.images")},
		{"study_token_key", func(d *caddyfile.Dispenser) error {
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.StudyTokenKey, h.StudyTokenPreviousKeys = args[0], args[1:]
			return nil
		}},
		{"study_token_ttl", func(d *caddyfile.Dispenser) error {
			var s string
			if err := oneArg(&s)(d); err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("study_token_ttl: %v", err)
			}
			h.StudyTokenTTL = caddy.Duration(dur)
			return nil
		}},
		{"study_token_binding", func(d *caddyfile.Dispenser) error { return parseStudyTokenBinding(d, h) }},
		{"base_url", oneArg(&h.BaseURL)},
		{"route_id", oneArg(&h.RouteID)},
		{"cors", func(d *caddyfile.Dispenser) error {
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
			return nil
		}},
		{"max_render_size", func(d *caddyfile.Dispenser) error {
			var s string
			if err := oneArg(&s)(d); err != nil {
				return err
			}
			n, err := strconv.Atoi(s)
			if err != nil || n < imagesource.MinMaxRenderSize || n > imagesource.MaxImageSide {
				return d.Errf("max_render_size: want a number of pixels from %d to %d, got %q", imagesource.MinMaxRenderSize, imagesource.MaxImageSide, s)
			}
			h.MaxRenderSize = n
			return nil
		}},
		{"metadata_cache", func(d *caddyfile.Dispenser) error {
			if h.MetadataCache != nil {
				return d.Err("metadata_cache is already set for this route")
			}
			c, err := unmarshalMetadataCache(d)
			if err != nil {
				return err
			}
			h.MetadataCache = c
			return nil
		}},
		{"delay", func(d *caddyfile.Dispenser) error {
			if h.Delay != nil {
				return d.Err("delay is already set for this route")
			}
			c, err := unmarshalDelay(d)
			if err != nil {
				return err
			}
			h.Delay = c
			return nil
		}},
		{"dicomweb_root", h.parseDICOMwebRoot},
		{"dynamic_config", func(d *caddyfile.Dispenser) error {
			if h.Dynamic != nil {
				return d.Err("dynamic_config is already set for this route")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Dynamic = &DynamicConfig{}
			if err := h.Dynamic.subdirectives().parseBlock(d, "dynamic_config"); err != nil {
				return err
			}
			if len(h.Dynamic.AllowHosts)+len(h.Dynamic.AllowEHRHosts)+len(h.Dynamic.AllowPACSHosts) == 0 {
				return d.Err("dynamic_config needs allow_hosts (or allow_ehr_hosts and allow_pacs_hosts): the EHR and PACS hosts dynamic configs may use")
			}
			return nil
		}},
	}
}

// subdirectives is the table of the dynamic_config block's options.
func (c *DynamicConfig) subdirectives() subdirectives {
	return subdirectives{
		{"allow_hosts", someArgs(&c.AllowHosts)},
		{"allow_ehr_hosts", someArgs(&c.AllowEHRHosts)},
		{"allow_pacs_hosts", someArgs(&c.AllowPACSHosts)},
		{"credentials", func(d *caddyfile.Dispenser) error {
			cred, err := parseDynamicCredential(d)
			if err != nil {
				return err
			}
			c.Credentials = append(c.Credentials, cred)
			return nil
		}},
		{"allow_url_credentials", flag(&c.AllowURLCredentials)},
		{"authz", func(d *caddyfile.Dispenser) error {
			if c.SMART != nil {
				return d.Err("dynamic_config: authz is already set")
			}
			if !d.NextArg() || d.Val() != "smart-on-fhir" {
				return d.Err("dynamic_config: authz smart-on-fhir { … } sets the policy of smart-on-fhir tenants")
			}
			// The module's own errors name their line; they pass through.
			mod, err := caddyfile.UnmarshalModule(d, "http.handlers.smart_imaging.authz.smart-on-fhir")
			if err != nil {
				return err
			}
			cfg := mod.(*SmartAuthz).Config
			if err := checkSMARTPolicy(cfg); err != nil {
				return d.Errf("dynamic_config: authz smart-on-fhir: %v", err)
			}
			c.SMART = &cfg
			return nil
		}},
		{"allow_mock", flag(&c.AllowMock)},
		{"max_configs", func(d *caddyfile.Dispenser) error {
			var s string
			if err := oneArg(&s)(d); err != nil {
				return err
			}
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return d.Errf("max_configs: want a positive integer, got %q", s)
			}
			c.MaxConfigs = n
			return nil
		}},
		{"metadata_cache", func(d *caddyfile.Dispenser) error {
			if c.MetadataCache != nil {
				return d.Err("dynamic_config: metadata_cache is already set")
			}
			mc, err := unmarshalMetadataCache(d)
			if err != nil {
				return err
			}
			c.MetadataCache = mc
			return nil
		}},
	}
}

// guestModule reads "<option> <kind> [args] { … }" into *raw: the guest
// module of namespace named kind, which parses its own block. Its errors
// name their own line and pass through unwrapped.
func guestModule(raw *json.RawMessage, option, kinds, namespace string) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		if *raw != nil {
			return d.Errf("%s is already set for this route", option)
		}
		if !d.NextArg() {
			return d.Errf("%s needs a kind: %s", option, kinds)
		}
		kind := d.Val()
		if err := knownKind(d, namespace, kind); err != nil {
			return err
		}
		mod, err := caddyfile.UnmarshalModule(d, namespace+"."+kind)
		if err != nil {
			return err
		}
		var warnings []caddyconfig.Warning
		*raw = caddyconfig.JSONModuleObject(mod, "kind", kind, &warnings)
		return nil
	}
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
