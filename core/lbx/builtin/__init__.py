"""Built-in plugins: always registered, imported as ``lbx.builtin.<name>``."""
