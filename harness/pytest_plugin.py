"""pytest plugin: placeholder until the parity items land (registered so the entry point resolves)."""
