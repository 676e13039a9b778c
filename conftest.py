"""Fixtures for every test in the repository (kernel and plugins): see lbx.pytest_plugin."""

pytest_plugins = ["lbx.pytest_plugin"]
