"""Tests of splitkd_flwr.hardware (a package, so the fakes import by relative path)."""
