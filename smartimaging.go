// Package smartimaging registers the smart_imaging Caddy module, so
// `xcaddy build --with github.com/smart-imaging/smart_imaging` builds a Caddy
// that is a SMART Imaging Access server. The code lives in caddymodule/ and
// the packages it wires together.
package smartimaging

import (
	// The Caddy glue: registers http.handlers.smart_imaging and its guest
	// modules.
	_ "github.com/smart-imaging/smart_imaging/caddymodule"
)
