"""The CLI's commands, one module each; every command is a thin wrapper over the library."""
