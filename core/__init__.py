"""The base room: settings, the domain types every room shares, checksums. Imports nothing else of adgen."""
