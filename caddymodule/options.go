package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// subdirective is one Caddyfile option of a module block: its name and the
// function that reads its arguments (and any block of its own) into the
// module. The dispenser is at the option's name when parse is called.
type subdirective struct {
	name  string
	parse func(d *caddyfile.Dispenser) error
}

// subdirectives is the table of a module's Caddyfile options: the one list
// of the names the parser accepts and of the names an unknown option's
// error gives. A module builds it over itself (rows write its fields), so
// adding an option is adding a row.
type subdirectives []subdirective

// names lists the options in table order.
func (s subdirectives) names() []string {
	out := make([]string, len(s))
	for i, o := range s {
		out[i] = o.name
	}
	return out
}

// find is the parse function of the option named name, or nil.
func (s subdirectives) find(name string) func(d *caddyfile.Dispenser) error {
	for _, o := range s {
		if o.name == name {
			return o.parse
		}
	}
	return nil
}

// parseOne reads the option the dispenser is at; what names the block in
// the error for an unknown option ("authz mock").
func (s subdirectives) parseOne(d *caddyfile.Dispenser, what string) error {
	if parse := s.find(d.Val()); parse != nil {
		return parse(d)
	}
	return d.Errf("unrecognized %s option '%s' (known: %s)", what, d.Val(), strings.Join(s.names(), ", "))
}

// parseBlock reads every option of the block that follows the current
// token.
func (s subdirectives) parseBlock(d *caddyfile.Dispenser, what string) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := s.parseOne(d, what); err != nil {
			return err
		}
	}
	return nil
}

// The argument readers below are the parse functions most rows use.

// oneArg reads exactly one argument into dst.
func oneArg(dst *string) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		if !d.NextArg() {
			return d.ArgErr()
		}
		*dst = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}
}

// someArgs appends one or more arguments to dst.
func someArgs(dst *[]string) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		*dst = append(*dst, args...)
		return nil
	}
}

// joinedArgs reads one or more arguments into dst, joined by spaces (an
// OAuth scope).
func joinedArgs(dst *string) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		*dst = strings.Join(args, " ")
		return nil
	}
}

// flag sets dst for an option without arguments.
func flag(dst *bool) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		if d.NextArg() {
			return d.ArgErr()
		}
		*dst = true
		return nil
	}
}

// positiveDuration reads one positive duration into dst.
func positiveDuration(dst *caddy.Duration) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		name := d.Val()
		var s string
		if err := oneArg(&s)(d); err != nil {
			return err
		}
		v, err := caddy.ParseDuration(s)
		if err != nil || v <= 0 {
			return d.Errf("%s: %q is not a positive duration", name, s)
		}
		*dst = caddy.Duration(v)
		return nil
	}
}

// positiveInt reads one positive integer into dst.
func positiveInt(dst *int) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		name := d.Val()
		var s string
		if err := oneArg(&s)(d); err != nil {
			return err
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return d.Errf("%s: %q is not a positive number", name, s)
		}
		*dst = n
		return nil
	}
}

// oneOf reads one argument into dst that must be one of allowed.
func oneOf(dst *string, allowed ...string) func(d *caddyfile.Dispenser) error {
	return func(d *caddyfile.Dispenser) error {
		name := d.Val()
		var s string
		if err := oneArg(&s)(d); err != nil {
			return err
		}
		for _, a := range allowed {
			if s == a {
				*dst = s
				return nil
			}
		}
		return d.Errf("%s: %q is not %s or %s", name, s, strings.Join(allowed[:len(allowed)-1], ", "), allowed[len(allowed)-1])
	}
}
