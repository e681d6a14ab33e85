# Put ahead of site-packages on a test pool's path: numpy cannot be imported there.
raise ImportError("No module named 'numpy' (hidden by the SnakeBridge test suite)")
