"""wanfly models: the action format, the action controller and its diffsynth pipeline.

Nothing heavy happens at import: import submodules directly (``from models.pipeline import ...``).
"""
