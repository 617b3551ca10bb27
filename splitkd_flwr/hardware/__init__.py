"""Real energy meters and clock knobs: NVML, Jetson sysfs, and a null meter."""
