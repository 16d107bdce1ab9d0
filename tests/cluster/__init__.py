"""A real local Kubernetes control plane for tests and development, built from registry
packages: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (go.mod here),
kwok (kwok/go.mod) and etcd (etcd/go.mod) from Go modules, an S3 server from PyPI (moto), and
an executor that runs builder pods' commands on this machine."""
