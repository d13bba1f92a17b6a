"""The Wan tab (gradio 3.41 and 4.40), its data, and the A1111/Forge callbacks."""
