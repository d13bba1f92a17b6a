"""The pure core: settings -> schedules -> movement -> prompts -> plan.

Functions over frozen dataclasses, no torch, no disk beyond reading a settings
file. Nothing here imports the other sub-packages (a test reads the imports).
"""
