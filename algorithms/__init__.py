"""Algorithm plugins, one file each, installed as ``alignbench.algorithms``.

Built-in algorithms are registered here as lazy entries of :data:`alignbench.registry.algorithms`
(imported on first use); third-party ones come through the ``alignbench.algorithms`` entry-point
group or a dotted path ``pkg.module:Name``.
"""

from alignbench.registry import algorithms as _registry

for _name, _target in {"flow_grpo": "alignbench.algorithms.flow_grpo:FlowGRPO",
                       "mixgrpo": "alignbench.algorithms.mixgrpo:MixGRPO",
                       "treegrpo": "alignbench.algorithms.treegrpo:TreeGRPO",
                       "gardo": "alignbench.algorithms.gardo:GARDO",
                       "tmpo": "alignbench.algorithms.tmpo:TMPO"}.items():
    if _name not in _registry._entries:
        _registry.register(_name, lazy=_target)
