"""The renderer: Wan models found and loaded, one diffusers call per clip, the render loop, Deforum's outputs.

The only sub-package that imports torch and diffusers (lazily, inside functions),
so the web UI can import its light parts (outputs, model discovery).
"""
