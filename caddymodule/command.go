package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/smart-imaging/smart_imaging/internal/refconfig"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "smart-imaging",
		Short: "Tools of the smart_imaging module",
		Long: `Tools of the smart_imaging module.

  caddy smart-imaging import [--site <address>] <config.json>...

prints a Caddyfile serving each reference server config (its server/config/*.json)
at the reference's paths: /{name}/fhir/… and /{name}/wado/…, name being the file's
name without .json. Secrets become {env.…} placeholders, listed at the top. A config
with no safe equivalent here becomes a comment saying why, and the command exits 1.`,
		CobraFunc: func(cmd *cobra.Command) {
			imp := &cobra.Command{
				Use:   "import [--site <address>] <config.json>...",
				Short: "Print the Caddyfile routes of reference server configs",
				Args:  cobra.MinimumNArgs(1),
				RunE: func(c *cobra.Command, args []string) error {
					site, _ := c.Flags().GetString("site")
					return runImport(c.OutOrStdout(), c.ErrOrStderr(), site, args)
				},
			}
			imp.Flags().String("site", ":8000", "the site address of the printed Caddyfile")
			cmd.AddCommand(imp)
		},
	})
}

// errSomeNotConverted makes the command exit 1 after printing.
var errSomeNotConverted = errors.New("some configs were not converted (see the comments in the output)")

// runImport prints the Caddyfile of the reference configs in files.
func runImport(out, errOut io.Writer, site string, files []string) error {
	var routes []*refconfig.Route
	failed := map[string]error{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		raw, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("reading %s: %w", f, err)
		}
		c, err := refconfig.Parse(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		r, err := refconfig.Convert(name, c)
		if err != nil {
			failed[name] = err
			fmt.Fprintf(errOut, "%s: %v\n", f, err)
			continue
		}
		routes = append(routes, r)
	}
	if _, err := io.WriteString(out, refconfig.Caddyfile(site, routes, failed)); err != nil {
		return err
	}
	if len(failed) > 0 {
		return errSomeNotConverted
	}
	return nil
}
