"""The modelled world of the case study (pure numpy, no torch): devices, 5G NR, mobility, cost."""
