"""A plugin as the arena reads it: loading a folder, the built-ins' extras, the scaffold of a new one."""
