"""How a Function's ``resources.gpu`` becomes a Kubernetes extended resource, and where it may run.

Shared by the operator (which writes the pod's resource limits and picks a runtime) and the GPU slicer
(which advertises the resources), so the two can never disagree on a name. Fractional GPUs are MPS
slices of one card (``voltgrid.dev/gpu-1-<n>``, one device per slice); whole cards are NVIDIA's own
``nvidia.com/gpu``. Kata VMs take GPUs by PCI passthrough, whole cards only, so a fractional request
never goes to a ``kata*`` runtime class (see docs/gpu-slicer.md, "Two node pools").
"""

from __future__ import annotations

from typing import Final

from voltgrid.api.constants import GPU_FRACTIONS, LABEL_PREFIX

#: Resource name of whole cards, served by NVIDIA's device plugin (or by Kata's passthrough on VM nodes).
WHOLE_GPU_RESOURCE: Final = "nvidia.com/gpu"
#: Node label naming the slice profile of a node ("eighth", "quarter", "half"); the chart runs one
#: slicer DaemonSet per profile, selecting nodes by this label.
LABEL_GPU_SLICE_PROFILE: Final = f"{LABEL_PREFIX}gpu-slice-profile"
#: Runtime classes whose name starts with this run pods in VMs: whole GPUs only.
VM_RUNTIME_PREFIX: Final = "kata"


def slice_resource_name(slices_per_card: int) -> str:
    """The extended resource of a slice that is ``1/slices_per_card`` of a card."""
    return f"{LABEL_PREFIX}gpu-1-{slices_per_card}"


#: Fraction of a card -> (slices per card, resource name), for each supported fraction.
SLICE_RESOURCES: Final[dict[float, tuple[int, str]]] = {
    fraction: (round(1 / fraction), slice_resource_name(round(1 / fraction))) for fraction in GPU_FRACTIONS
}


def slice_resource_for(gpu: float) -> tuple[str, int] | None:
    """The resource name and count a pod requests for ``gpu`` cards; None when it needs no GPU.

    ``0.25`` -> ``("voltgrid.dev/gpu-1-4", 1)``, ``2`` -> ``("nvidia.com/gpu", 2)``.
    Raises ValueError for a fraction no slicer profile serves (the API model rejects those earlier).
    """
    if gpu == 0:
        return None
    if gpu in SLICE_RESOURCES:
        return SLICE_RESOURCES[gpu][1], 1
    if gpu > 0 and float(gpu).is_integer():
        return WHOLE_GPU_RESOURCE, int(gpu)
    raise ValueError(f"gpu {gpu} is neither one of {sorted(SLICE_RESOURCES)} nor a whole number of cards")


def runtime_can_use_gpu(gpu: float, runtime_class_name: str | None) -> bool:
    """Whether pods of ``runtime_class_name`` (None: the default runc) can be given ``gpu`` cards.

    VM runtimes (Kata) pass whole cards through; MPS slices need the host's MPS pipe and shared memory,
    which a VM cannot reach.
    """
    fractional = gpu > 0 and not float(gpu).is_integer()
    return not (fractional and runtime_class_name is not None and runtime_class_name.startswith(VM_RUNTIME_PREFIX))
