"""Tasks as registered units (registry.py). The built-in tasks register themselves, one module each,
when the registry is first asked; importing this package loads none of them."""
