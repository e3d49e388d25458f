"""The calibscope dashboard: Gradio widgets over the engine. Nothing here computes statistics."""
