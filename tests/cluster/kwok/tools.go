//go:build tools

// Package tools pins kwok in a module of its own: kwok v0.7.0 is built against the Kubernetes
// v0.33 libraries, which the control plane's v0.34 replaces would otherwise override.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
