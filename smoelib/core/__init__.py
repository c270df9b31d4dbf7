"""What every part of sMoE shares, once: the observation, the decision types and file format,
the knob set, the accounting rules, the guards, the one control tick and the actuator port.
Pure: no network, no torch, no clock."""
