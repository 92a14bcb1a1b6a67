"""The host's fixtures come from opcore_hooks.testing (a pytest11 plugin); nothing else here."""
