// Package configs embeds kpush's reference configuration (kpush.yaml, every
// key with its default) and the development setup (dev.yaml), so the binary
// carries both.
package configs

import _ "embed"

// Default is configs/kpush.yaml.
//
//go:embed kpush.yaml
var Default []byte

// Dev is configs/dev.yaml, used by `kpush -dev`.
//
//go:embed dev.yaml
var Dev []byte
