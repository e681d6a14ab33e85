# Put ahead of site-packages on a test pool's path: pyarrow cannot be imported there.
raise ImportError("No module named 'pyarrow' (hidden by the SnakeBridge test suite)")
