"""maskgate: a face-mask access gate.

The `maskgate` package holds what every part shares: the core domain types
(:mod:`maskgate.core`), the configuration (:mod:`maskgate.config`), the event
store (:mod:`maskgate.store`) and the command line (:mod:`maskgate.cli`). The
agent, dashboard and training live in the sub-packages ``maskgate.gate``,
``maskgate.dashboard`` and ``maskgate.training`` (folders ``gate/``,
``dashboard/`` and ``training/`` at the top of the repository).
"""

__version__ = "0.1.0"
