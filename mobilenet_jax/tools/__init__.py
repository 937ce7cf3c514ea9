"""The commands a user runs, each `python -m mobilenet_jax.tools.<name>` (and a
console script for the common ones, setup.py); `python -m mobilenet_jax.main`
trains. Each is a thin layer of flags over the library beside this package."""
