"""The local accelerator, named the way Kubernetes nodes name it."""

from __future__ import annotations


def gpu_product_label(device_name: str) -> str:
    """`NVIDIA H100 80GB HBM3` -> `NVIDIA-H100-80GB-HBM3`, as NVIDIA's GPU feature discovery
    writes it into the `nvidia.com/gpu.product` node label."""
    return "-".join(device_name.split())


def local_gpu() -> str | None:
    """The product label of GPU 0, or None without a usable CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    return gpu_product_label(torch.cuda.get_device_name(0))


def local_gpu_capability() -> tuple[int, int] | None:
    """GPU 0's CUDA compute capability, e.g. (9, 0) for an H100 or H200; None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return int(major), int(minor)
