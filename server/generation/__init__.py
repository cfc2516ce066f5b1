"""The generation side of the server: the world, the model interface, the worker, stream pacing, flights."""
