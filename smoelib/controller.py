"""The seed API's controller: ``from smoelib.controller import SMoEController``.

The control loop lives in :mod:`smoelib.control` (controller, report, Prometheus source); this
module is the stable public name of its entry point.
"""

from smoelib.control.controller import Clock, SMoEController, TickReport, WallClock

__all__ = ["SMoEController", "Clock", "WallClock", "TickReport"]
