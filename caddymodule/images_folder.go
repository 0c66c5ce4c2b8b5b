package caddymodule

import (
	"context"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/folder"
)

func init() {
	caddy.RegisterModule(FolderImages{})
}

// FolderImages is the "folder" image source: every DICOM Part 10 file under
// a directory, indexed at start. Files it cannot read are logged by name and
// skipped.
type FolderImages struct {
	// Root is the directory to index, recursively.
	Root string `json:"root,omitempty"`
	// Lookup is "studies-by-mrn" (default) or "all-studies".
	Lookup imagesource.Lookup `json:"lookup,omitempty"`

	src *folder.Source
}

// CaddyModule returns the Caddy module information.
func (FolderImages) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smart_imaging.images.folder",
		New: func() caddy.Module { return new(FolderImages) },
	}
}

// Provision indexes the folder.
func (f *FolderImages) Provision(ctx caddy.Context) error {
	root := caddy.NewReplacer().ReplaceAll(f.Root, "")
	if root == "" {
		return fmt.Errorf("images folder: a directory is required")
	}
	if f.Lookup != "" {
		if _, err := imagesource.ParseLookup(string(f.Lookup)); err != nil {
			return fmt.Errorf("images folder: %w", err)
		}
	}
	src, err := folder.Open(root, ctx.Logger())
	if err != nil {
		return fmt.Errorf("images folder %s: %w (give an existing, readable directory of DICOM files)", root, err)
	}
	f.src = src
	return nil
}

// LookupMode implements ImagesModule.
func (f *FolderImages) LookupMode() imagesource.Lookup { return f.Lookup }

// FindStudies implements imagesource.Source.
func (f *FolderImages) FindStudies(ctx context.Context, q imagesource.Query) ([]imagesource.Study, error) {
	return f.src.FindStudies(ctx, q)
}

// Retrieve implements imagesource.Source.
func (f *FolderImages) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	return f.src.Retrieve(w, r, req)
}

// UnmarshalCaddyfile reads:
//
//	images folder <dir> {
//		lookup studies-by-mrn|all-studies
//	}
func (f *FolderImages) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "folder"
	if !d.NextArg() {
		return d.Err("images folder needs a directory")
	}
	f.Root = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return f.subdirectives().parseBlock(d, "images folder")
}

// subdirectives is the table of the block's options.
func (f *FolderImages) subdirectives() subdirectives {
	return subdirectives{
		{"lookup", lookupArg(&f.Lookup)},
	}
}

// lookupArg reads the argument of a lookup subdirective into dst.
func lookupArg(dst *imagesource.Lookup) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		if !d.NextArg() {
			return d.ArgErr()
		}
		lk, err := imagesource.ParseLookup(d.Val())
		if err != nil {
			return d.Errf("lookup: %v", err)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		*dst = lk
		return nil
	}
}

// Interface guards
var (
	_ caddy.Module          = (*FolderImages)(nil)
	_ caddy.Provisioner     = (*FolderImages)(nil)
	_ caddyfile.Unmarshaler = (*FolderImages)(nil)
	_ ImagesModule          = (*FolderImages)(nil)
)
