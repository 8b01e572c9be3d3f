"""Options of the modules that work from the engine configuration file the sync role writes."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  config:
    description: The engine configuration file on the host that runs the module.
    type: path
    required: true
  direction:
    description: C(forward) (source to target) or C(reverse) (target to source, after cutover).
    type: str
    choices: [forward, reverse]
    default: forward
"""
