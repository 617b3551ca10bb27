"""Fake Jetson sysfs trees: INA3221 hwmon rails and the GPU's devfreq node, as JetPack 5+ lays them out.

Layouts (label, bus mV, mA) per I2C device, channels 1-3 as `in{N}_label`, `in{N}_input`,
`curr{N}_input`; `in4..6_input` are the unlabelled shunt voltages the driver also exposes.
"""

from __future__ import annotations

from pathlib import Path

Layout = dict[str, list[tuple[str, int, int]]]

ORIN_NX: Layout = {
    "1-0040": [
        ("VDD_IN", 5000, 1200),
        ("VDD_CPU_GPU_CV", 5000, 400),
        ("VDD_SOC", 5000, 300),
    ]
}
AGX_ORIN: Layout = {
    "1-0040": [
        ("VDD_GPU_SOC", 19000, 800),
        ("VDD_CPU_CV", 19000, 200),
        ("VIN_SYS_5V0", 5000, 600),
    ],
    "1-0041": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5000, 100), ("NC", 0, 0)],
}
XAVIER_NX: Layout = {
    "7-0040": [
        ("VDD_IN", 5000, 1000),
        ("VDD_CPU_GPU_CV", 5000, 500),
        ("VDD_SOC", 5000, 200),
    ]
}
AGX_XAVIER: Layout = {
    "1-0040": [("GPU", 19000, 500), ("CPU", 19000, 100), ("SOC", 19000, 150)],
    "1-0041": [("CV", 19000, 10), ("VDDRQ", 19000, 50), ("SYS5V", 5000, 400)],
}

# devfreq steps (Hz) as the boards list them in available_frequencies.
ORIN_GPU_HZ = [
    306000000,
    408000000,
    510000000,
    612000000,
    714000000,
    816000000,
    918000000,
    1020000000,
    1122000000,
    1224000000,
    1300500000,
]
XAVIER_GPU_HZ = [
    114750000,
    216750000,
    318750000,
    420750000,
    522750000,
    624750000,
    675750000,
    828750000,
    905250000,
    1032750000,
    1198500000,
    1236750000,
    1338750000,
    1377000000,
]


def make_rails(root: Path, layout: Layout, hwmon: int = 3) -> Path:
    """Write ``layout`` under ``<root>/bus/i2c/devices``; return ``root`` (the fake /sys)."""
    for offset, (device, channels) in enumerate(sorted(layout.items())):
        d = root / "bus/i2c/devices" / device / "hwmon" / f"hwmon{hwmon + offset}"
        d.mkdir(parents=True)
        (d / "name").write_text("ina3221\n")
        for n, (label, millivolts, milliamps) in enumerate(channels, start=1):
            (d / f"in{n}_label").write_text(label + "\n")
            (d / f"in{n}_input").write_text(f"{millivolts}\n")
            (d / f"curr{n}_input").write_text(f"{milliamps}\n")
            (d / f"in{n + 3}_input").write_text(
                "40\n"
            )  # shunt voltage (mV), unlabelled
    # A temperature sensor on the same bus: no rails, must be ignored.
    other = root / "bus/i2c/devices/0-004c/hwmon/hwmon0"
    other.mkdir(parents=True, exist_ok=True)
    (other / "temp1_input").write_text("45000\n")
    return root


def set_rail(root: Path, label: str, milliamps: int) -> None:
    """Change one rail's current, as the sensor would under a new load."""
    for label_path in root.glob("bus/i2c/devices/*/hwmon/hwmon*/in*_label"):
        if label_path.read_text().strip() == label:
            n = label_path.name[2:-6]
            (label_path.parent / f"curr{n}_input").write_text(f"{milliamps}\n")
            return
    raise KeyError(label)


def make_devfreq(root: Path, node: str, steps_hz: list[int]) -> Path:
    """Write a GPU devfreq node under ``<root>/class/devfreq``; return its directory."""
    d = root / "class/devfreq" / node
    d.mkdir(parents=True)
    (d / "available_frequencies").write_text(" ".join(map(str, steps_hz)) + "\n")
    (d / "min_freq").write_text(f"{steps_hz[0]}\n")
    (d / "max_freq").write_text(f"{steps_hz[-1]}\n")
    (d / "cur_freq").write_text(f"{steps_hz[-1]}\n")
    (root / "class/devfreq/ff000000.other").mkdir()  # some other devfreq device
    return d


def devfreq_kernel(monkeypatch, node_dir: Path, *, root: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
    """Make writes to ``node_dir`` behave as the kernel's devfreq does; return the write log.

    Writing needs root (``PermissionError``, EACCES, otherwise: the tests may run as root, so
    file modes cannot show it); a write leaving ``min_freq > max_freq`` fails with EINVAL;
    ``cur_freq`` follows ``max_freq``.
    """
    import errno

    real_write_text = Path.write_text
    writes: list[str] = []

    def write_text(self: Path, data: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.parent != node_dir:
            return real_write_text(self, data, *args, **kwargs)
        if not root:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        low = (
            int(data)
            if self.name == "min_freq"
            else int((node_dir / "min_freq").read_text())
        )
        high = (
            int(data)
            if self.name == "max_freq"
            else int((node_dir / "max_freq").read_text())
        )
        if low > high:
            raise OSError(errno.EINVAL, "Invalid argument", str(self))
        writes.append(f"{self.name}={data}")
        real_write_text(self, data, *args, **kwargs)
        return real_write_text(node_dir / "cur_freq", str(high), *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    return writes
