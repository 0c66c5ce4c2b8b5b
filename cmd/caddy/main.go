// Command caddy is a custom Caddy build that includes the smart_imaging
// module, so `go run ./cmd/caddy …` works without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/smart-imaging/smart_imaging"
)

func main() {
	caddycmd.Main()
}
