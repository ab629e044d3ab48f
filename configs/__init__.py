"""Experiment configs (one ``get_config()`` file each) and the logical-axis rules."""
