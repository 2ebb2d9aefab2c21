"""The UID2 wire protocol, sans-I/O. See README.md in this folder for the rules."""
