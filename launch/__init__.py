"""Launcher side: compose the config, plan and start runs, report on sweeps."""
