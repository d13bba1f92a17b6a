"""Run by the web UI at start: install the light, conflict-free requirements.

Only packages the hosts do not pin are installed here. The renderer's newer
diffusers/transformers never go into the host's environment.
"""
import launch

REQUIREMENTS = {
    # import name: pip requirement
    "numexpr": "numexpr>=2.8",
    "imageio_ffmpeg": "imageio-ffmpeg>=0.4.9",
}

for module, requirement in REQUIREMENTS.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install \"{requirement}\"", f"Deforum Wan requirement: {requirement}")
