"""Build Parsl configurations from validated site-configs."""
