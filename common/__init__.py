"""What every part of the project shares: the user-error model (errors.py), the strict config loader
(config.py) and the CLI wrapper that reports user errors (cli.py). Imports nothing from models/ or
pipeline/, so both can import it without a cycle."""
