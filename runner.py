"""`python runner.py <command>` is `opcore <command>`, for a checkout that is not installed."""

from opcore_hooks.cli import main

if __name__ == "__main__":
    main()
