"""What the commands do, as library functions over a store and a model: search, status, migrate, optimize.

May import every room below it (core, images, store, model, ingest); never the web app or the CLI.
"""
