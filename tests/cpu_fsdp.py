"""Test-only shim, imported by the torchrun workers of tests/test_multiprocess.py: lets accelerate's FSDP
plugin (what `training.fsdp` / `training.fsdp_config` configure through TrainingArguments) run on CPU
ranks with gloo. accelerate 1.15 turns the plugin on only for accelerator device types and otherwise
silently trains with DDP; torch's FSDP2 itself (`fully_shard`, DTensor) runs on CPU. The shim sets the
distributed type to FSDP whenever the state was built with an FSDP plugin (every later
`AcceleratorState()` call included), nothing else."""

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__
_plugin = [None]


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    plugin = fsdp_plugin or _plugin[0]
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        _plugin[0] = plugin
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


AcceleratorState.__init__ = _fsdp_on_cpu
