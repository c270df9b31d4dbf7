"""The control loop: the controller driving the tick on a real clock, its report, its health
and own metrics, and the Prometheus metric source (every PromQL template sMoE runs)."""
