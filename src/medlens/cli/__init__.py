"""The ``medlens`` command line: thin commands over the Python API, heavy imports inside them."""
