"""Hugging Face Spaces entry point (``app_file`` in the README's front matter).

A Space is shared by many visitors, so this starts the dashboard in shared-Space mode: capped
uploads, no local model folders, per-session state. Run ``calibscope`` for the local app.
"""
from ui.app import launch

if __name__ == "__main__":
    launch(host="0.0.0.0", port=7860, shared_space=True)
