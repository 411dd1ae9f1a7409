"""Command-line entry points (`atrous <command>`)."""
