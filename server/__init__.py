"""wanfly server: the real-time flight WebSocket, REST jobs, gradio and the web UI (``python -m server``).

Nothing heavy happens at import; see ``server.app.create_app`` and ``server.generation.worlds.load_world``.
"""
